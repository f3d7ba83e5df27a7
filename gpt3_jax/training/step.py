"""The pure train and eval steps, and the one place they are jitted with explicit shardings.

``train_step(state, batch) -> (state, metrics)`` is what the trainer runs and what
``gpt3-jax plan`` compiles ahead of time: both call ``jit_train_step``.
A batch is ``{"inputs", "targets"}``, int32 [m, b, t]: m micro-batches of b sequences whose
gradients are accumulated in float32 before one optimizer update.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gpt3_jax.config import Config
from gpt3_jax.model import mask_vocab
from gpt3_jax.training.optim import learning_rate, set_learning_rate
from gpt3_jax.training.setup import Setup
from gpt3_jax.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, targets: jax.Array, vocab_size: int) -> jax.Array:
    """Mean next-token loss. logits [..., v_padded] float32; the padding rows of the vocabulary are
    masked out so they never take probability mass."""
    return optax.softmax_cross_entropy_with_integer_labels(mask_vocab(logits, vocab_size), targets).mean()


def make_loss_fn(cfg: Config, graphdef: nnx.GraphDef) -> Callable[..., jax.Array]:
    def loss_fn(params: nnx.State, inputs: jax.Array, targets: jax.Array, key: jax.Array | None) -> jax.Array:
        model = nnx.merge(graphdef, params)
        logits, _ = model(inputs, dropout_key=key)  # (b, t, v)
        return cross_entropy(logits, targets, cfg.model.vocab_size)

    return loss_fn


def make_train_step(
    cfg: Config, graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    loss_fn = make_loss_fn(cfg, graphdef)
    grad_fn = jax.value_and_grad(loss_fn)
    use_dropout = cfg.model.dropout > 0

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        inputs, targets = batch["inputs"], batch["targets"]  # (m, b, t)
        n_micro = inputs.shape[0]
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        keys = jax.random.split(step_key, n_micro) if use_dropout else None

        def micro(carry: tuple[jax.Array, Any], xs: tuple[Any, ...]) -> tuple[tuple[jax.Array, Any], None]:
            loss_sum, grad_sum = carry
            x, y, key = xs
            loss, grads = grad_fn(state.params, x, y, key)
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            return (loss_sum + loss, grad_sum), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        (loss_sum, grad_sum), _ = jax.lax.scan(
            micro, (jnp.zeros((), jnp.float32), zeros), (inputs, targets, keys)
        )
        loss = loss_sum / n_micro
        grads = jax.tree.map(lambda g: g / n_micro, grad_sum)

        tokens = state.tokens + inputs.size
        lr = learning_rate(cfg.optim, tokens)
        opt_state = set_learning_rate(state.opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(params, opt_state, state.step + 1, tokens, state.rng)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": lr}
        return new_state, metrics

    return train_step


def make_eval_step(cfg: Config, graphdef: nnx.GraphDef) -> Callable[[nnx.State, Batch], jax.Array]:
    loss_fn = make_loss_fn(cfg, graphdef)

    def eval_step(params: nnx.State, batch: Batch) -> jax.Array:
        return loss_fn(params, batch["inputs"], batch["targets"], None)

    return eval_step


def jit_train_step(s: Setup) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The train step of a ``Setup`` jitted once, with explicit input/output shardings and donated
    state. Call it inside ``jax.set_mesh(s.mesh)`` (the trainer and the planner do)."""
    return jax.jit(
        make_train_step(s.cfg, s.graphdef, s.tx),
        in_shardings=(s.shardings, s.train_batch),
        out_shardings=(s.shardings, None),
        donate_argnums=(0,),
    )


def jit_eval_step(s: Setup) -> Callable[[nnx.State, Batch], jax.Array]:
    return jax.jit(make_eval_step(s.cfg, s.graphdef), in_shardings=(s.shardings.params, s.eval_batch))
