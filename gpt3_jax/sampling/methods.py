"""Sampling methods: small frozen dataclasses mapping logits [b, v] and a key to tokens [b].

They are hashable, so a jitted decode loop takes one as a static argument (one compile per
method and settings, per shape bucket).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from gpt3_jax.errors import UserError


@dataclass(frozen=True)
class Greedy:
    """The most likely token (temperature 0)."""

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)


@dataclass(frozen=True)
class Sample:
    """Draw from softmax(logits / temperature), restricted to the ``top_k`` most likely tokens
    (0 = all) and then to the smallest set whose probability reaches ``top_p`` (1 = all)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __call__(self, logits: jax.Array, key: jax.Array) -> jax.Array:
        logits = logits.astype(jnp.float32) / self.temperature
        if self.top_k:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p < 1.0:
            logits = top_p_filter(logits, self.top_p)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits of each row [..., v] (ties at the k-th value kept too); -inf others."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filter on [..., v]: keep the smallest set of most likely tokens whose probability
    mass reaches ``p``; -inf elsewhere. A token is kept when the mass of the tokens strictly more
    likely than it is still below ``p``."""
    probs = jax.nn.softmax(logits, axis=-1)
    sorted_probs = jnp.sort(probs, axis=-1)[..., ::-1]  # descending
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    n_keep = jnp.sum(mass_before < p, axis=-1, keepdims=True)  # >= 1 since mass_before[0] = 0
    threshold = jnp.take_along_axis(sorted_probs, n_keep - 1, axis=-1)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


Method = Greedy | Sample


def make_method(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> Method:
    """The method for command-line style settings; temperature 0 or top-k 1 is greedy.

    Raises ``UserError`` for a temperature that is negative or not finite, top-k < 0 or top-p
    outside (0, 1].
    """
    if not 0 <= temperature < math.inf:  # NaN fails too
        raise UserError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise UserError(f"top-k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise UserError(f"top-p must be in (0, 1] (1 = off), got {top_p}")
    if temperature == 0 or top_k == 1:
        return Greedy()
    return Sample(float(temperature), int(top_k), float(top_p))
