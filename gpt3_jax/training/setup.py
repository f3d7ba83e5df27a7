"""One setup for everything that runs or plans the train step.

``setup(cfg)`` builds the mesh and rules table, checks the batch against the mesh, and makes the
optimizer, the model's graph, the abstract train state and the shardings of the state and of the
batches. The trainer (``training.loop``) and the memory planner (``gpt3_jax.plan``) both start
from it, so the step the planner compiles is the step the trainer runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt3_jax import sharding
from gpt3_jax.config import Config
from gpt3_jax.errors import UserError
from gpt3_jax.model import abstract_gpt, check_attention
from gpt3_jax.training.optim import make_optimizer
from gpt3_jax.training.state import TrainState


@dataclass(frozen=True)
class Setup:
    """What the train step is built from. ``micro`` is the micro-batch size in sequences."""

    cfg: Config
    mesh: Mesh
    rules: sharding.Rules
    tx: optax.GradientTransformation
    graphdef: nnx.GraphDef
    abstract: TrainState  # shapes and dtypes only
    shardings: TrainState  # a NamedSharding per leaf
    train_batch: dict[str, NamedSharding]  # inputs/targets [m, b, t]
    eval_batch: dict[str, NamedSharding]  # inputs/targets [b, t]
    micro: int

    def abstract_batch(self, micro_batches: int | None = None) -> dict[str, jax.ShapeDtypeStruct]:
        """A full step's batch as sharded abstract arrays [m, b, t] (for ahead-of-time compiles)."""
        m = micro_batches or self.cfg.train.micro_batches
        shape = (m, self.micro, self.cfg.model.n_ctx)
        return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=s) for k, s in self.train_batch.items()}


def check_batch(cfg: Config, data_parallel: int) -> int:
    """The micro-batch size in sequences; it must split evenly over the data-parallel shards."""
    t = cfg.train
    micro = t.batch_size // t.micro_batches
    if micro % data_parallel:
        raise UserError(
            f"train.batch_size={t.batch_size} in {t.micro_batches} micro-batch(es) gives {micro} sequences "
            f"per micro-batch, not divisible by the data-parallel size {data_parallel} (mesh data × fsdp); "
            f"make batch_size / micro_batches a multiple of {data_parallel}, or change the mesh"
        )
    return micro


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


def batch_shardings(mesh: Mesh, rules: sharding.Rules, micro: bool = True) -> dict[str, NamedSharding]:
    """Inputs/targets: batch over the data-parallel axes; ``micro`` adds the leading m axis."""
    names = (None, "act_batch", None) if micro else ("act_batch", None)
    spec = sharding.logical_to_spec(names, rules)
    return {k: NamedSharding(mesh, spec) for k in ("inputs", "targets")}


def abstract_state(
    cfg: Config, tx: optax.GradientTransformation, rules: sharding.Rules
) -> tuple[nnx.GraphDef, TrainState]:
    """The model's graph and the train state's shapes, built without touching a device."""
    graphdef, params = abstract_gpt(cfg.model, rules)
    state = TrainState(
        params=params,
        opt_state=jax.eval_shape(tx.init, params),
        step=jax.ShapeDtypeStruct((), jnp.int32),
        tokens=jax.ShapeDtypeStruct((), jnp.float32),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
    )
    return graphdef, state


def setup(cfg: Config, devices: Sequence[Any] | None = None) -> Setup:
    """Mesh, rules, optimizer, graph, abstract state and shardings for ``cfg`` on ``devices``
    (default: all). Raises ``UserError`` for a mesh that does not fit the devices or a batch that
    does not split over the data-parallel shards."""
    check_attention(cfg.model)
    mesh = sharding.make_mesh(cfg.mesh, devices)
    rules = sharding.rules_from_config(cfg.mesh.rules)
    micro = check_batch(cfg, sharding.data_parallel_size(mesh, rules))
    tx = make_optimizer(cfg.optim)
    graphdef, abstract = abstract_state(cfg, tx, rules)
    return Setup(
        cfg=cfg,
        mesh=mesh,
        rules=rules,
        tx=tx,
        graphdef=graphdef,
        abstract=abstract,
        shardings=state_shardings(abstract, mesh, rules),
        train_batch=batch_shardings(mesh, rules),
        eval_batch=batch_shardings(mesh, rules, micro=False),
        micro=micro,
    )
