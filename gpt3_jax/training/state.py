"""The train state: a plain pytree, born sharded.

abstract shapes (``nnx.eval_shape``) → shardings from the rules table → ``jit(init,
out_shardings=…)``: no parameter or optimizer moment is ever materialised whole on one device.
The optimizer state carries the parameters' logical names, so it shards like its parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt3_jax import sharding
from gpt3_jax.config import Config
from gpt3_jax.model import GPT, abstract_gpt


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: nnx.State  # fp32 master weights
    opt_state: optax.OptState
    step: jax.Array  # int32, steps completed
    tokens: jax.Array  # float32, tokens consumed (drives the schedule)
    rng: jax.Array  # uint32[2] raw key; dropout keys are folded from it by step


def model_graphdef_and_abstract(cfg: Config) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's static graph and abstract parameters, built without touching a device."""
    return abstract_gpt(cfg.model)


def abstract_state(cfg: Config, tx: optax.GradientTransformation) -> TrainState:
    _, params = model_graphdef_and_abstract(cfg)
    return TrainState(
        params=params,
        opt_state=jax.eval_shape(tx.init, params),
        step=jax.ShapeDtypeStruct((), jnp.int32),
        tokens=jax.ShapeDtypeStruct((), jnp.float32),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )


def state_shardings(abstract: TrainState, mesh: Mesh, rules: sharding.Rules) -> TrainState:
    """NamedShardings for every leaf: parameters and moments by the rules, scalars replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return TrainState(
        params=sharding.state_shardings(abstract.params, mesh, rules),
        opt_state=sharding.state_shardings(abstract.opt_state, mesh, rules),
        step=replicated,
        tokens=replicated,
        rng=replicated,
    )


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """Attach shardings to abstract leaves (ShapeDtypeStruct), e.g. as an Orbax restore target."""

    def one(a: Any, s: NamedSharding) -> Any:
        if isinstance(a, nnx.Variable):
            return a.replace(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s))
        return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)

    return jax.tree.map(one, abstract, shardings, is_leaf=lambda x: isinstance(x, nnx.Variable))


def init_state(
    cfg: Config, tx: optax.GradientTransformation, shardings: TrainState, *, params: nnx.State | None = None
) -> TrainState:
    """A fresh train state, created directly in its shards. ``params`` (fine-tuning) replaces the
    random initialisation; the optimizer state is always new."""

    def init(params: nnx.State | None) -> TrainState:
        if params is None:
            with nnx.use_eager_sharding(False):
                params = nnx.state(GPT(cfg.model, rngs=nnx.Rngs(cfg.run.seed)))
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            tokens=jnp.zeros((), jnp.float32),
            rng=jax.random.key_data(jax.random.key(cfg.run.seed + 1)).astype(jnp.uint32),
        )

    return jax.jit(init, out_shardings=shardings)(params)
