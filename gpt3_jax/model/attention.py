"""Attention math: the mask of dense and locally banded causal attention, and the attention itself.

Pure functions on arrays, used by training, prefill and every decode step alike. The mask is
described once, by positions: a query at position ``i`` sees a key at position ``j`` when
``0 <= j <= i`` and, in a locally banded layer of window ``w``, ``j > i - w``. Keys with position
-1 (an empty cache slot, padding) are never seen.

Queries, keys and values are [b, n, t, h]. The KV cache keeps keys and values as *rows*, batch
and heads merged ([b·n, s, h], row ``i·n + j`` is batch row ``i``, head ``j``), and a decode step
attends over it in that layout, so the attention products read the cache exactly as it is stored:
on XLA:CPU a [b, n, s, h] cache at batch 1 (XLA drops the size-1 axis before the product) made copy
insertion copy every layer's cache several times per step (benchmarks/bench_cache_layout.py). In
training the heads stay a separate axis: merging them with the batch hid the sharding from XLA's
propagation (the 175B plan on 64 devices grew from 73 to 129 GiB per device).
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
    """Masked softmax attention, the reference: q [..., t, h], k/v [..., s, h] with the same
    leading (batch) axes, mask broadcastable to [..., t, s] → [..., t, h].

    Logits and softmax run in float32 whatever the compute dtype; a row with no visible key (a
    padding query) gives zeros rather than NaN.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...th,...sh->...ts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(v.dtype)
    return jnp.einsum("...ts,...sh->...th", probs, v)


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

    q [b, n, t, h] at positions q_pos [b, t]; k, v [b, n, s, h] — or rows [b·n, s, h], the KV
    cache's layout — at k_pos [b, s] (-1: no key there; keys in any order) → [b, n, t, h].
    """
    mask = causal_mask(q_pos, k_pos, window)[:, None]  # (b, 1, t, s): shared by the heads
    if k.ndim == 4:
        return attend(q, k, v, mask)
    b, n, t, h = q.shape  # rows: read the cache as it lies
    mask = jnp.broadcast_to(mask, (b, n, t, mask.shape[-1])).reshape(b * n, t, -1)
    return attend(q.reshape(b * n, t, h), k, v, mask).reshape(b, n, t, h)
