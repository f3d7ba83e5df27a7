"""The train state: a plain pytree, born sharded.

abstract shapes (``training.setup``) → shardings from the rules table → ``jit(init,
out_shardings=…)``: no parameter or optimizer moment is ever materialised whole on one device.
The optimizer state carries the parameters' logical names, so it shards like its parameters.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gpt3_jax.config import Config
from gpt3_jax.model import GPT


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    params: nnx.State  # fp32 master weights
    opt_state: optax.OptState
    step: jax.Array  # int32, steps completed
    tokens: jax.Array  # float32, tokens consumed (drives the schedule)
    rng: jax.Array  # uint32[2] raw key; dropout keys are folded from it by step


def init_state(
    cfg: Config, tx: optax.GradientTransformation, shardings: TrainState, *, params: nnx.State | None = None
) -> TrainState:
    """A fresh train state, created directly in its shards. ``params`` (fine-tuning) replaces the
    random initialisation; the optimizer state is always new."""

    def init(params: nnx.State | None) -> TrainState:
        if params is None:
            params = nnx.state(GPT(cfg.model, rngs=nnx.Rngs(cfg.run.seed)))
        return TrainState(
            params=params,
            opt_state=tx.init(params),
            step=jnp.zeros((), jnp.int32),
            tokens=jnp.zeros((), jnp.float32),
            rng=jax.random.key_data(jax.random.key(cfg.run.seed + 1)).astype(jnp.uint32),
        )

    return jax.jit(init, out_shardings=shardings)(params)
