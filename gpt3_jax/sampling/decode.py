"""Prefill and one decode step with a KV cache, built from the model's own modules.

Both reuse ``Embed``, ``Block.ln_1/ln_2/mlp``, ``Attention.qkv/out``, ``model.ln_f`` and
``embed.unembed``, and the attention math ``attend``/``causal_mask``; only the choice of keys differs
from the training forward pass. Prompts are left-padded (see ``cache``): row ``r`` has ``pad[r]``
padding slots, its token at slot time ``t`` has position ``t - pad[r]``, and no query ever sees a
padding slot, so each row's logits equal those of its unpadded prompt.

The layer stack is unrolled (a Python loop over static layer indices) rather than scanned, over
weights split per group once (``unstack``) and a cache held per layer: inside the decode
``while_loop`` every weight is then read where it lies and every cache row is written in place,
where slices of stacked arrays were copied on every step (docs/sampling.md, "Decode speed").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax.model import GPT, Attention, Block, Embed, attend, causal_mask
from gpt3_jax.sampling import cache as kv
from gpt3_jax.sampling.cache import KVCache
from gpt3_jax.sharding import constrain

AttnFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def unstack(model: GPT) -> tuple[nnx.State, ...]:
    """The layer-stacked group parameters as one state per group (a copy, made once per model).

    Decoding runs the layers one by one inside a ``while_loop``. Slicing a layer out of the
    stacked [l, ...] weights there is not free on XLA:CPU: each slice is a copy of that layer's
    weights on every step, which tripled the memory traffic of the layers' matmuls (GPT-2 124M:
    ~90 → ~43 ms per step). Weights passed in already split are read in place.
    """
    _, state = nnx.split(model.groups)
    split = jax.jit(lambda s: tuple(jax.tree.map(lambda a, g=g: a[g], s) for g in range(model.cfg.n_groups)))
    return split(state)


def _layers(model: GPT, groups: Sequence[nnx.State] | None = None) -> Iterator[tuple[int, str, Block]]:
    """(layer index i, attention kind, block) for every block, in order.

    ``groups`` (from ``unstack``) gives each group's weights as separate arrays; without it the
    stacked weights are sliced here (fine once, as in prefill; costly inside the decode loop).
    """
    graphdef, state = nnx.split(model.groups)
    if groups is None:
        groups = [jax.tree.map(lambda a, g=g: a[g], state) for g in range(model.cfg.n_groups)]
    pattern = model.cfg.attention_pattern
    for g, group_state in enumerate(groups):
        group = nnx.merge(graphdef, group_state)
        for j, block in enumerate(group.blocks):
            yield g * len(pattern) + j, pattern[j], block


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


def _attend_cached(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``attend`` over a cache in its own layout: q [b,t,n,h], k/v [b·n,s,h], mask [b,t,s] → [b,t,n,h].

    The same math as ``attend``; only the einsums name the cache's axis order, so the dots read
    each layer's cache where it lies (see ``cache`` for why rows are (batch, head) pairs).
    """
    b, t, n, h = q.shape
    mask = kv.rows(jnp.broadcast_to(mask[:, :, None], (b, t, n, mask.shape[-1])))  # (b·n, t, s)
    q = kv.rows(q)  # (b·n, t, h)
    logits = jnp.einsum("ath,ash->ats", q, k, preferred_element_type=jnp.float32) * h**-0.5
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(v.dtype)
    out = jnp.einsum("ats,ash->ath", probs, v)  # (b·n, t, h)
    return out.reshape(b, n, t, h).swapaxes(1, 2)


def _unembed_one(embed: Embed, x: jax.Array) -> jax.Array:
    """``Embed.unembed`` for one position, [b, 1, d] → float32 logits [b, v], as x @ wteᵀ.

    Same math. Written with an explicit transpose, XLA:CPU fuses it into the product and reads the
    [v, d] table row by row as stored; the einsum's library call with a transposed operand was
    ~1 ms (5 %) slower per step for GPT-2 124M at batch 1 (same at batch 8).
    """
    w = embed.wte[...].astype(x.dtype)
    logits = jnp.matmul(x[:, 0], w.T, preferred_element_type=jnp.float32)
    return constrain(logits, ("act_batch", "act_vocab"))


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
    model: GPT,
    tokens: jax.Array,
    pad: jax.Array,
    s_max: int,
    *,
    all_logits: bool = False,
    groups: Sequence[nnx.State] | None = None,
) -> tuple[jax.Array, KVCache]:
    """Run the left-padded prompts in one pass and fill the cache.

    tokens [b, p] int (row r's first ``pad[r]`` entries are padding), pad [b] int; ``groups``
    optionally the per-group weights from ``unstack``. Returns logits [b, v] at the last slot (or
    [b, p, v] with ``all_logits``) and a cache for ``s_max`` slot times holding times 0..p-1.
    """
    b, p = tokens.shape
    times = jnp.arange(p)
    positions = jnp.maximum(times[None, :] - pad[:, None], 0)  # (b, p); padding gets position 0
    real = times[None, :] >= pad[:, None]  # (b, s) keys that are not padding
    x = model.embed(tokens, positions)  # (b, p, d)
    ks: list[jax.Array] = []
    vs: list[jax.Array] = []
    for _, _, block in _layers(model, groups):

        def attn(q: jax.Array, k: jax.Array, v: jax.Array, block: Block = block) -> jax.Array:
            ks.append(k)
            vs.append(v)
            mask = causal_mask(times, times, block.attn.window)[None] & real[:, None, :]  # (b, t, s)
            return attend(q, k, v, mask[:, None])

        x = _block(block, x, attn)
    cache = kv.from_prefill(model.cfg, ks, vs, s_max)
    x = x if all_logits else x[:, -1:]
    logits = model.embed.unembed(model.ln_f(x))  # (b, p or 1, v)
    return (logits if all_logits else logits[:, 0]), cache


def step(
    model: GPT,
    token: jax.Array,
    t: jax.Array,
    pad: jax.Array,
    cache: KVCache,
    groups: Sequence[nnx.State] | None = None,
) -> tuple[jax.Array, KVCache]:
    """Feed one token per row at slot time ``t`` (scalar): token [b] → logits [b, v], new cache.

    ``groups``: the per-group weights from ``unstack``; pass them when ``step`` runs in a loop.
    """
    cfg = model.cfg
    x = model.embed(token[:, None], (t - pad)[:, None])  # (b, 1, d)
    cache_k, cache_v = list(cache.k), list(cache.v)
    for i, kind, block in _layers(model, groups):

        def attn(q: jax.Array, k: jax.Array, v: jax.Array, i: int = i, kind: str = kind) -> jax.Array:
            # Write this step's key/value into layer i's slot first, then attend over the cache.
            n_slots = cache_k[i].shape[1]
            slot = t if kind == "dense" else jnp.mod(t, n_slots)
            at = (0, slot, 0)
            dtype = cache_k[i].dtype
            cache_k[i] = jax.lax.dynamic_update_slice(cache_k[i], kv.rows(k).astype(dtype), at)
            cache_v[i] = jax.lax.dynamic_update_slice(cache_v[i], kv.rows(v).astype(dtype), at)
            times = kv.slot_times(kind, n_slots, t)  # (s,)
            window = cfg.local_window if kind == "local" else None
            mask = causal_mask(t[None], times, window)[None] & (times[None, :] >= pad[:, None])[:, None]
            return _attend_cached(q, cache_k[i], cache_v[i], mask)  # mask (b, 1, s)

        x = _block(block, x, attn, one_token=True)
    logits = _unembed_one(model.embed, model.ln_f(x))  # (b, v)
    pin = partial(kv.constrain_rows, n_head=cfg.n_head)
    return logits, KVCache(tuple(map(pin, cache_k)), tuple(map(pin, cache_v)))
