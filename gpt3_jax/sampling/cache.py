"""The KV cache: an explicit pytree passed into and returned from every decode step.

Layers are stacked over the ``layers`` axis like the parameters (``model.groups``), one array per
entry of the attention pattern. A dense entry keeps every position, [l, b, s_max, n, h]; a locally
banded entry keeps only ``local_window`` slots, [l, b, w, n, h], used as a ring buffer: time ``t``
lives in slot ``t % w``, so the cache of a local layer does not grow with the text.

Time here is *slot time*: prompts are left-padded to a common length, so row ``r``'s token at slot
time ``t`` has position ``t - pad[r]``. Slot times below ``pad[r]`` hold padding and are masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gpt3_jax.config import ModelConfig
from gpt3_jax.sharding import constrain

# [layers, batch, time, heads, head_dim]: heads on `tensor`, batch on the data axes (rules table).
CACHE_AXES = ("layers", "act_batch", "act_len", "act_heads", None)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    """Keys and values per attention-pattern entry; ``k[j]``/``v[j]`` are [l, b, s_j, n, h].

    ``s_j`` is ``s_max`` for a dense entry and ``local_window`` (at most ``s_max``) for a local one.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @property
    def batch(self) -> int:
        return self.k[0].shape[1]


def slots(cfg: ModelConfig, kind: str, s_max: int) -> int:
    """How many time slots an entry of ``kind`` keeps for texts of up to ``s_max`` slot times."""
    return min(cfg.local_window, s_max) if kind == "local" else s_max


def slot_times(kind: str, n_slots: int, t: jax.Array | int) -> jax.Array | np.ndarray:
    """The slot time held by each slot [s] once times ``0..t`` are written (ring for local).

    Dense: slot ``j`` holds time ``j``. Ring: slot ``j`` holds the latest time ``<= t`` congruent
    to ``j`` mod ``n_slots``; negative means never written. NumPy in, NumPy out (static times).
    """
    j = np.arange(n_slots)
    if kind == "dense":
        return j
    return t - (t - j) % n_slots


def from_prefill(
    cfg: ModelConfig, ks: tuple[jax.Array, ...], vs: tuple[jax.Array, ...], s_max: int
) -> KVCache:
    """Build the cache from the prompt's keys/values, each [l, b, p, n, h] (slot times 0..p-1)."""
    out_k, out_v = [], []
    for kind, k, v in zip(cfg.attention_pattern, ks, vs, strict=True):
        p = k.shape[2]
        n_slots = slots(cfg, kind, s_max)
        if kind == "dense":
            pad = [(0, 0), (0, 0), (0, n_slots - p), (0, 0), (0, 0)]
            k, v = jnp.pad(k, pad), jnp.pad(v, pad)
        else:
            # Slot j takes the latest prompt time congruent to j; slots past the prompt stay empty.
            times = slot_times(kind, n_slots, p - 1)
            src = np.clip(times, 0, p - 1)
            keep = jnp.asarray(times >= 0)[None, None, :, None, None]
            k = jnp.where(keep, k[:, :, src], 0).astype(k.dtype)
            v = jnp.where(keep, v[:, :, src], 0).astype(v.dtype)
        out_k.append(constrain(k, CACHE_AXES))
        out_v.append(constrain(v, CACHE_AXES))
    return KVCache(tuple(out_k), tuple(out_v))


def nbytes(cache: KVCache) -> int:
    return sum(a.size * a.dtype.itemsize for a in (*cache.k, *cache.v))
