"""Attention math: the mask of dense and locally banded causal attention, and the attention itself.

Pure functions on arrays, used by training, prefill and every decode step alike. The mask is
described once, by positions: a query at position ``i`` sees a key at position ``j`` when
``0 <= j <= i`` and, in a locally banded layer of window ``w``, ``j > i - w``. Keys with position
-1 (an empty cache slot, padding) are never seen.

Queries, keys and values come as *rows*: batch and heads merged into one leading axis,
r = b·n (row ``i·n + j`` is batch row ``i``, head ``j``), so every attention product has a single
batch axis. The KV cache is kept in that same layout and the products read it exactly as it is
stored: on XLA:CPU any reshape between a cache update and its read (a [b, n, s, h] cache at batch
1, where XLA drops the size-1 axis) made copy insertion copy every layer's cache several times per
decode step (benchmarks/bench_attention_layout.py). On TPU and GPU the merge is a free reshape.
Axes: b batch, n heads, r rows (b·n), t query time, s key time, h head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None) -> jax.Array:
    """Which keys each query may see: q_pos [..., t], k_pos [..., s] → bool [..., t, s].

    Visible: ``0 <= k <= q`` and, for a locally banded layer (``window`` set), ``k > q - window``
    (the ``window`` most recent positions, the query's own included).
    """
    q = q_pos[..., :, None]
    k = k_pos[..., None, :]
    visible = (k <= q) & (k >= 0)
    if window is not None:
        visible &= k > q - window
    return visible


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked softmax attention, the reference: q [r,t,h], k/v [r,s,h], mask [r,t,s] → [r,t,h].

    Logits and softmax run in float32 whatever the compute dtype; a row with no visible key (a
    padding query) gives zeros rather than NaN.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("rth,rsh->rts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(v.dtype)
    return jnp.einsum("rts,rsh->rth", probs, v)


def row_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None, n_head: int) -> jax.Array:
    """``causal_mask`` of each batch row [b, t, s], repeated for its heads: [b·n, t, s]."""
    mask = causal_mask(q_pos, k_pos, window)
    b, t, s = mask.shape
    return jnp.broadcast_to(mask[:, None], (b, n_head, t, s)).reshape(b * n_head, t, s)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_pos: jax.Array,
    k_pos: jax.Array,
    *,
    window: int | None,
) -> jax.Array:
    """Causal (``window`` None) or locally banded attention by positions.

    q [b·n, t, h] at positions q_pos [b, t]; k, v [b·n, s, h] at k_pos [b, s] (-1: no key there;
    keys in any order) → [b·n, t, h].
    """
    return attend(q, k, v, row_mask(q_pos, k_pos, window, q.shape[0] // q_pos.shape[0]))
