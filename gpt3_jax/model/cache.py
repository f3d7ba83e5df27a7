"""The KV cache: an explicit pytree that ``Attention``, ``Block`` and ``GPT`` take and return.

One ``LayerCache`` per attention layer, in the layout the attention function reads directly
(rows: batch and heads merged, see ``gpt3_jax.model.attention``):

    k, v   [b·n, s, h]    keys and values in ``s`` slots
    pos    [b, s] int32   the position each slot holds; -1 = empty (never seen by a query)
    end    [] int32       slot times written so far: the next entry goes to slot ``end % s``

A dense layer has a slot for every time of the text (``s`` = the cache length). A locally banded
layer keeps only ``local_window`` slots, used as a ring buffer: time ``t`` lives in slot ``t % s``,
so its cache does not grow with the text. Because every slot records its position, the mask needs
nothing else: a query sees a slot when its position is in the query's causal band, and padding
(written with position -1) is never seen. All rows write the same slot at each call, so a batch of
prompts of different lengths is left-padded and every row keeps its own positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class LayerCache:
    """Keys, values and positions of one attention layer (see the module docstring)."""

    k: jax.Array  # [b·n, s, h]
    v: jax.Array  # [b·n, s, h]
    pos: jax.Array  # [b, s] int32, -1 = empty
    end: jax.Array  # [] int32

    @classmethod
    def empty(cls, batch: int, n_head: int, slots: int, d_head: int, dtype: jnp.dtype) -> LayerCache:
        kv = jnp.zeros((batch * n_head, slots, d_head), dtype)
        return cls(kv, kv, jnp.full((batch, slots), -1, jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def slots(self) -> int:
        return self.k.shape[1]

    def write(self, k: jax.Array, v: jax.Array, pos: jax.Array) -> LayerCache:
        """Store new keys/values k, v [b·n, t, h] at positions pos [b, t] in the next ``t`` slot
        times; in a ring only the last ``slots`` of them survive."""
        t, s = k.shape[1], self.slots
        end = self.end + t
        if t > s:  # a ring shorter than the chunk: the earlier entries would be overwritten anyway
            k, v, pos = k[:, t - s :], v[:, t - s :], pos[:, t - s :]
            t = s
        first = (end - t) % s
        if t == 1:  # the decode step: one in-place update
            k = jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), (0, first, 0))
            v = jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), (0, first, 0))
            pos = jax.lax.dynamic_update_slice(self.pos, pos.astype(jnp.int32), (0, first))
            return LayerCache(k, v, pos, end)
        slots = (first + jnp.arange(t)) % s  # distinct, since t <= s
        return LayerCache(
            self.k.at[:, slots].set(k.astype(self.k.dtype)),
            self.v.at[:, slots].set(v.astype(self.v.dtype)),
            self.pos.at[:, slots].set(pos.astype(jnp.int32)),
            end,
        )

    def nbytes(self) -> int:
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(self))
