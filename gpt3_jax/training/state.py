"""The train state: a plain pytree, born sharded.

abstract shapes (``training.setup``) → shardings from the rules table → ``jit(init,
out_shardings=…)``: no parameter or optimizer moment is ever materialised whole on one device.
The optimizer state carries the parameters' logical names, so it shards like its parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

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


def make_init(cfg: Config, tx: optax.GradientTransformation) -> Callable[[nnx.State | None], TrainState]:
    """The function ``init_state`` compiles: ``params`` (or a random initialisation when None) →
    a fresh ``TrainState`` with a new optimizer state."""

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

    return init


def init_state(
    cfg: Config, tx: optax.GradientTransformation, shardings: TrainState, *, params: nnx.State | None = None
) -> TrainState:
    """A fresh train state, created directly in its shards. ``params`` (fine-tuning) replaces the
    random initialisation; the optimizer state is always new."""
    lowered = jax.jit(make_init(cfg, tx), out_shardings=shardings).lower(params)
    return lowered.compile(compiler_options=init_compiler_options(_platform(shardings)))(params)


def init_compiler_options(platform: str) -> dict[str, int]:
    """XLA options for compiling the one-off initialisation on ``platform``. On CPU, LLVM
    optimisation level 1 instead of XLA's default 3: the random-number code's optimisation is
    most of that compile and buys nothing for a function that runs once (2.7 s → 1.3 s for the
    shakespeare-char preset, 5.7 s → 3.4 s for GPT-3 Small; level 0 compiles faster still but
    runs slowly enough that larger models start later: docs/performance.md, "Start-up"). Values
    agree to float32 rounding (``tests/test_training.py``). Other backends compile it as they
    compile everything."""
    return {"xla_backend_optimization_level": 1} if platform == "cpu" else {}


def _platform(shardings: TrainState) -> str:
    sharding = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))[0]
    return next(iter(sharding.device_set)).platform
