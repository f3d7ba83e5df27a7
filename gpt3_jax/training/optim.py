"""GPT-3's optimisation recipe (appendix B): AdamW, the token-based learning-rate schedule, and
the batch-size ramp. Lengths are in tokens, as the paper gives them.

- AdamW β1 0.9, β2 0.95, ε 1e-8; decoupled weight decay 0.1 on matrices only (not biases or
  LayerNorm); global-norm clipping at 1.0.
- Learning rate: linear warmup over ``warmup_tokens``, cosine decay to ``min_lr_ratio`` of the
  peak at ``decay_tokens``, then constant.
- Batch ramp: the batch grows linearly from ``ramp_start_tokens`` to the full batch over
  ``ramp_tokens``, in whole micro-batches (``train.micro_batches`` sets the granularity).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gpt3_jax.config import Config, OptimConfig
from gpt3_jax.errors import UserError


def learning_rate(cfg: OptimConfig, tokens: jax.Array | float) -> jax.Array:
    """The learning rate after ``tokens`` tokens have been seen (the current step's included)."""
    tokens = jnp.asarray(tokens, jnp.float32)
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    warm = peak * tokens / max(cfg.warmup_tokens, 1.0)
    span = max(cfg.decay_tokens - cfg.warmup_tokens, 1.0)
    progress = jnp.clip((tokens - cfg.warmup_tokens) / span, 0.0, 1.0)
    cosine = floor + 0.5 * (1.0 + jnp.cos(jnp.pi * progress)) * (peak - floor)
    return jnp.where(tokens < cfg.warmup_tokens, warm, cosine)


def ramp_micro_batches(cfg: Config, tokens_seen: int) -> int:
    """How many micro-batches the next step uses under GPT-3's batch-size ramp (host side).

    The batch (in sequences) grows linearly from ``ramp_start_tokens`` to ``train.batch_size``
    over ``ramp_tokens``; it is rounded up to whole micro-batches of
    ``batch_size / micro_batches`` sequences. Without a ramp every step uses all micro-batches.
    """
    o, t = cfg.optim, cfg.train
    if o.ramp_tokens <= 0:
        return t.micro_batches
    micro_seqs = t.batch_size // t.micro_batches
    start = o.ramp_start_tokens / cfg.model.n_ctx
    target = start + (t.batch_size - start) * min(tokens_seen / o.ramp_tokens, 1.0)
    return max(1, min(t.micro_batches, math.ceil(target / micro_seqs - 1e-9)))


def check_ramp(cfg: Config) -> None:
    if cfg.optim.ramp_tokens > 0 and cfg.train.micro_batches == 1:
        raise UserError(
            "optim.ramp_tokens: the batch ramp grows the batch in whole micro-batches; "
            "set train.micro_batches > 1 (e.g. 8) or optim.ramp_tokens=0"
        )


MATRIX_NAMES = ("wte", "wpe")  # besides every ``*_w`` projection; biases and LayerNorms are not


def decay_mask(params: Any) -> Any:
    """True for the weight matrices (embeddings and ``*_w`` projections), by parameter name, so it
    works on NNX states and on the plain trees optax hands around alike."""

    def is_matrix(path: tuple[Any, ...], _: Any) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return any(n.endswith("_w") or n in MATRIX_NAMES for n in names)

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """Clipping, then AdamW whose learning rate the train step sets each step from the schedule."""
    # ``mask`` must be static: inject_hyperparams would take a callable for a schedule of the step
    adamw = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=cfg.lr,
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    clip = optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity()
    return optax.chain(clip, adamw)


def set_learning_rate(opt_state: optax.OptState, lr: jax.Array) -> optax.OptState:
    """The chain's AdamW state with its injected learning rate replaced."""
    clip_state, adamw_state = opt_state
    hyper = dict(adamw_state.hyperparams, learning_rate=jnp.asarray(lr, jnp.float32))
    return (clip_state, adamw_state._replace(hyperparams=hyper))
