"""Attention math: masks for dense and locally banded causal attention, and the softmax itself.

Pure functions on arrays, shared by the training forward pass and the KV-cache sampler.
Axes: b batch, t query time, s key time, n heads, h head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(q_pos: jax.Array, k_pos: jax.Array, window: int | None) -> jax.Array:
    """Which keys each query may see: [..., t, s] bool.

    ``q_pos`` [..., t] and ``k_pos`` [..., s] are absolute positions. A key is visible when it is
    not in the future and, for a locally banded layer (``window`` set), when it is one of the
    ``window`` most recent positions, the query's own included: q - window < k <= q.
    """
    q = q_pos[..., :, None]
    k = k_pos[..., None, :]
    visible = k <= q
    if window is not None:
        visible &= k > q - window
    return visible


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Softmax attention. q [b,t,n,h], k/v [b,s,n,h], mask broadcastable to [b,n,t,s] → [b,t,n,h].

    Logits and softmax run in float32 whatever the compute dtype; a row with no visible key
    (never the case for causal masks) would give zeros rather than NaN.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("btnh,bsnh->bnts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(v.dtype)
    return jnp.einsum("bnts,bsnh->btnh", probs, v)
