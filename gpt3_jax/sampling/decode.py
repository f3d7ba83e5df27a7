"""Prefill and one decode step with a KV cache, built from the model's own modules.

Both reuse ``Embed``, ``Block.ln_1/ln_2/mlp``, ``Attention.qkv/out``, ``model.ln_f`` and
``embed.unembed``, and the attention math ``attend``/``causal_mask``; only the choice of keys differs
from the training forward pass. Prompts are left-padded (see ``cache``): row ``r`` has ``pad[r]``
padding slots, its token at slot time ``t`` has position ``t - pad[r]``, and no query ever sees a
padding slot, so each row's logits equal those of its unpadded prompt.

The layer stack is unrolled (a Python loop over static layer indices) rather than scanned: each
layer then updates its rows of the stacked cache in place, where a scan would rewrite the whole
cache as its output on every step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax.model import GPT, Attention, Block, attend, causal_mask
from gpt3_jax.sampling import cache as kv
from gpt3_jax.sampling.cache import KVCache
from gpt3_jax.sharding import constrain

AttnFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def _layers(model: GPT) -> Iterator[tuple[int, int, Block]]:
    """(layer group g, pattern entry j, block) for every block, in order."""
    graphdef, state = nnx.split(model.groups)
    for g in range(model.cfg.n_groups):
        group = nnx.merge(graphdef, jax.tree.map(lambda a, g=g: a[g], state))
        for j, block in enumerate(group.blocks):
            yield g, j, block


def _qkv_2d(attn: Attention, x: jax.Array) -> jax.Array:
    """``Attention.qkv`` as one plain [b·t, d] @ [d, 3·n·h] matmul → q, k, v [b, t, n, h].

    Same math; the weight is only reshaped (free). XLA's CPU backend lowers the module's einsum,
    whose output puts the qkv axis first, as W^T·x and copies (transposes) the weight to do so:
    for one token that copy costs more than the matmul, on every step.
    """
    b, t, _ = x.shape
    d, _, n, h = attn.c_attn_w.shape
    w = attn.c_attn_w[...].astype(attn.dtype).reshape(d, 3 * n * h)
    qkv = (x @ w).reshape(b, t, 3, n, h) + attn.c_attn_b[...].astype(attn.dtype)
    return tuple(constrain(qkv[:, :, i], ("act_batch", "act_len", "act_heads", None)) for i in range(3))


def _out_2d(attn: Attention, y: jax.Array) -> jax.Array:
    """``Attention.out`` as [b·t, n·h] @ [n·h, d], for the same reason as ``_qkv_2d``."""
    b, t, n, h = y.shape
    w = attn.c_proj_w[...].astype(attn.dtype).reshape(n * h, -1)
    return y.reshape(b, t, n * h) @ w + attn.c_proj_b[...].astype(attn.dtype)


def _block(block: Block, x: jax.Array, attn: AttnFn, *, one_token: bool = False) -> jax.Array:
    """The pre-LayerNorm block with its attention's key/value source swapped in: [b,t,d] → [b,t,d]."""
    qkv, out = (_qkv_2d, _out_2d) if one_token else (Attention.qkv, Attention.out)
    q, k, v = qkv(block.attn, block.ln_1(x))
    x = x + out(block.attn, attn(q, k, v))
    x = x + block.mlp(block.ln_2(x))
    return constrain(x, ("act_batch", "act_len", "act_embed"))


def mask_vocab(logits: jax.Array, size: int) -> jax.Array:
    """Ids ≥ ``size`` (the padded vocabulary, or ids the tokenizer lacks) are never chosen: -inf."""
    return jnp.where(jnp.arange(logits.shape[-1]) < size, logits, -jnp.inf)


def prefill(
    model: GPT, tokens: jax.Array, pad: jax.Array, s_max: int, *, all_logits: bool = False
) -> tuple[jax.Array, KVCache]:
    """Run the left-padded prompts in one pass and fill the cache.

    tokens [b, p] int (row r's first ``pad[r]`` entries are padding), pad [b] int.
    Returns logits [b, v] at the last slot (or [b, p, v] with ``all_logits``) and a cache for
    ``s_max`` slot times holding times 0..p-1.
    """
    b, p = tokens.shape
    times = jnp.arange(p)
    positions = jnp.maximum(times[None, :] - pad[:, None], 0)  # (b, p); padding gets position 0
    real = times[None, :] >= pad[:, None]  # (b, s) keys that are not padding
    x = model.embed(tokens, positions)  # (b, p, d)
    ks: list[list[jax.Array]] = [[] for _ in model.cfg.attention_pattern]
    vs: list[list[jax.Array]] = [[] for _ in model.cfg.attention_pattern]
    for _, j, block in _layers(model):

        def attn(q: jax.Array, k: jax.Array, v: jax.Array, j: int = j, block: Block = block) -> jax.Array:
            ks[j].append(k)
            vs[j].append(v)
            mask = causal_mask(times, times, block.attn.window)[None] & real[:, None, :]  # (b, t, s)
            return attend(q, k, v, mask[:, None])

        x = _block(block, x, attn)
    cache = kv.from_prefill(model.cfg, tuple(map(jnp.stack, ks)), tuple(map(jnp.stack, vs)), s_max)
    x = x if all_logits else x[:, -1:]
    logits = model.embed.unembed(model.ln_f(x))  # (b, p or 1, v)
    return (logits if all_logits else logits[:, 0]), cache


def step(
    model: GPT, token: jax.Array, t: jax.Array, pad: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Feed one token per row at slot time ``t`` (scalar): token [b] → logits [b, v], new cache."""
    cfg = model.cfg
    x = model.embed(token[:, None], (t - pad)[:, None])  # (b, 1, d)
    cache_k, cache_v = list(cache.k), list(cache.v)
    for g, j, block in _layers(model):
        kind = cfg.attention_pattern[j]

        def attn(
            q: jax.Array, k: jax.Array, v: jax.Array, g: int = g, j: int = j, kind: str = kind
        ) -> jax.Array:
            # Write this step's key/value into group g's slot first, then attend over the cache.
            n_slots = cache_k[j].shape[2]
            slot = t if kind == "dense" else jnp.mod(t, n_slots)
            at = (g, 0, slot, 0, 0)
            cache_k[j] = jax.lax.dynamic_update_slice(cache_k[j], k[None].astype(cache_k[j].dtype), at)
            cache_v[j] = jax.lax.dynamic_update_slice(cache_v[j], v[None].astype(cache_v[j].dtype), at)
            times = kv.slot_times(kind, n_slots, t)  # (s,)
            window = cfg.local_window if kind == "local" else None
            mask = causal_mask(t[None], times, window)[None] & (times[None, :] >= pad[:, None])[:, None]
            return attend(q, cache_k[j][g], cache_v[j][g], mask[:, None])  # mask (b, 1, 1, s)

        x = _block(block, x, attn, one_token=True)
    logits = model.embed.unembed(model.ln_f(x))[:, 0]  # (b, v)
    new = KVCache(
        tuple(constrain(a, kv.CACHE_AXES) for a in cache_k),
        tuple(constrain(a, kv.CACHE_AXES) for a in cache_v),
    )
    return logits, new
