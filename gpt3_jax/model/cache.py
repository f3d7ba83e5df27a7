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

from gpt3_jax.sharding import Rules, constrain


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

    def rows_of(self, x: jax.Array) -> jax.Array:
        """Keys or values [b, n, t, h] in the cache's row layout [b·n, t, h]."""
        b, n, t, h = x.shape
        return x.reshape(b * n, t, h)

    def heads(self, x: jax.Array, batch: int) -> jax.Array:
        """The cache's keys or values [b·n, s, h] seen as [b, n, s, h]."""
        r, s, h = x.shape
        return x.reshape(batch, r // batch, s, h)

    def write(self, k: jax.Array, v: jax.Array, pos: jax.Array) -> LayerCache:
        """Store new keys/values k, v [b, n, t, h] at positions pos [b, t] in the next ``t`` slot
        times; in a ring only the last ``slots`` of them survive."""
        k, v = self.rows_of(k), self.rows_of(v)
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

    def constrain(self, rules: Rules) -> LayerCache:
        """The keys and values pinned as [b, n, s, h] by ``rules`` (batch on the data axes, heads on
        ``tensor``); the cache itself when no mesh is set."""
        if jax.sharding.get_abstract_mesh().empty:
            return self
        b = self.pos.shape[0]
        names = ("act_batch", "act_heads", "act_len", None)
        k, v = (constrain(self.heads(x, b), names, rules).reshape(x.shape) for x in (self.k, self.v))
        return LayerCache(k, v, constrain(self.pos, ("act_batch", "act_len"), rules), self.end)

    def nbytes(self) -> int:
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(self))
