"""The KV cache: an explicit pytree passed into and returned from every decode step.

One key array and one value array per layer, [b·n, s, h]: row ``r·n + j`` holds batch row ``r``,
head ``j`` (layer ``i`` has the attention kind ``attention_pattern[i % len(pattern)]``). A dense
layer keeps every position, ``s = s_max``; a locally banded layer keeps only ``local_window``
slots, used as a ring buffer: time ``t`` lives in slot ``t % w``, so the cache of a local layer does
not grow with the text.

Why this layout (measured on XLA:CPU, see docs/sampling.md "Decode speed"):

- per-layer arrays are separate ``while_loop`` carries, so each step's ``dynamic_update_slice``
  writes one position in place (a stacked [l, ...] cache updated at ``[l]`` was copied);
- time after (batch, head), so the attention dots read each (batch, head) row's keys and values
  where they lie; [b, s, n, h] was copied to a transposed layout per layer per step;
- batch and heads merged into one axis, so batch 1 has no size-1 axis: XLA drops such an axis
  before the dot, and the reshape made it duplicate the update and copy the whole cache each step.

Sharding: ``constrain_rows`` pins the merged axis as [b, n] by the rules table (batch on the data
axes, heads on ``tensor``), the same split as the parameters' heads.

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

# The cache's [b·n, s, h] seen as [batch, heads, time, head_dim] for sharding.
CACHE_AXES = ("act_batch", "act_heads", "act_len", None)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KVCache:
    """Keys and values per layer; ``k[i]``/``v[i]`` are [b·n, s_i, h].

    ``s_i`` is ``s_max`` for a dense layer and ``local_window`` (at most ``s_max``) for a local one.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


def rows(x: jax.Array) -> jax.Array:
    """Keys or values [b, t, n, h] → the cache's layout [b·n, t, h]."""
    b, t, n, h = x.shape
    return x.swapaxes(1, 2).reshape(b * n, t, h)


def constrain_rows(x: jax.Array, n_head: int) -> jax.Array:
    """Pin a cache array [b·n, s, h] as [b, n, s, h] by the rules table (batch on the data axes,
    heads on ``tensor``); a no-op when no mesh is set."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    bn, s, h = x.shape
    return constrain(x.reshape(bn // n_head, n_head, s, h), CACHE_AXES).reshape(x.shape)


def kind_of(cfg: ModelConfig, layer: int) -> str:
    """The attention kind of layer ``layer`` (the pattern repeats over the stack)."""
    return cfg.attention_pattern[layer % len(cfg.attention_pattern)]


def slots(cfg: ModelConfig, kind: str, s_max: int) -> int:
    """How many time slots a layer of ``kind`` keeps for texts of up to ``s_max`` slot times."""
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


def from_prefill(cfg: ModelConfig, ks: list[jax.Array], vs: list[jax.Array], s_max: int) -> KVCache:
    """Build the cache from each layer's prompt keys/values, [b, p, n, h] (slot times 0..p-1)."""
    out_k, out_v = [], []
    for i, (k, v) in enumerate(zip(ks, vs, strict=True)):
        kind = kind_of(cfg, i)
        k, v = rows(k), rows(v)  # (b·n, p, h)
        p = k.shape[1]
        n_slots = slots(cfg, kind, s_max)
        if kind == "dense":
            pad = [(0, 0), (0, n_slots - p), (0, 0)]
            k, v = jnp.pad(k, pad), jnp.pad(v, pad)
        else:
            # Slot j takes the latest prompt time congruent to j; slots past the prompt stay empty.
            times = slot_times(kind, n_slots, p - 1)
            src = np.clip(times, 0, p - 1)
            keep = jnp.asarray(times >= 0)[None, :, None]
            k = jnp.where(keep, k[:, src], 0).astype(k.dtype)
            v = jnp.where(keep, v[:, src], 0).astype(v.dtype)
        out_k.append(constrain_rows(k, cfg.n_head))
        out_v.append(constrain_rows(v, cfg.n_head))
    return KVCache(tuple(out_k), tuple(out_v))


def nbytes(cache: KVCache) -> int:
    return sum(a.size * a.dtype.itemsize for a in (*cache.k, *cache.v))
