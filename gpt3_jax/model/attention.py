"""Attention: the mask of dense and locally banded causal attention, and one attention function
with several implementations behind it (``model.attention_impl``).

The mask is described once, by positions: a query at position ``i`` sees a key at position ``j``
when ``0 <= j <= i`` and, in a locally banded layer of window ``w``, ``j > i - w``. Keys with
position -1 (an empty cache slot, padding) are never seen. Every implementation computes that
mask's attention; they differ in what they skip:

- ``xla``: the reference. Scores for every (query, key) pair, masked: O(T²) work and temporaries.
- ``blockwise`` (pure JAX, every backend): queries in blocks; each block reads only the keys its
  causal band can reach, in chunks as long as the block, combined by an online softmax. A dense
  layer takes blocks of ``block`` and costs about half of ``xla``; a banded layer of window W
  takes blocks of about W (``query_block``) and costs about 2W keys per query, O(T·W).
  Temporaries O(T·block).
- ``cudnn``: ``jax.nn.dot_product_attention(implementation="cudnn")`` on NVIDIA GPUs (bf16/fp16).
- ``splash``: Pallas splash attention on TPU (its causal and local masks skip whole blocks).
- ``auto``: picks by backend, dtype and shape (``resolve_impl``; measurements in
  docs/performance.md).

The last three (and ``blockwise``'s skipping) rely on keys standing at their queries' positions,
0 … T-1 (self-attention over a whole sequence: training, and the model called without explicit
positions); otherwise — a KV cache, left padding — ``xla`` computes the exact mask.

Queries, keys and values are [b, n, t, h]. The KV cache keeps keys and values as *rows*, batch
and heads merged ([b·n, s, h], row ``i·n + j`` is batch row ``i``, head ``j``), and a decode step
attends over it in that layout, so the attention products read the cache exactly as it is stored:
on XLA:CPU a [b, n, s, h] cache at batch 1 (XLA drops the size-1 axis before the product) made copy
insertion copy every layer's cache several times per step (benchmarks/bench_cache_layout.py). In
training the heads stay a separate axis: merging them with the batch hid the sharding from XLA's
propagation (the 175B plan on 64 devices grew from 73 to 129 GiB per device).
Axes: b batch, n heads, t query time, s key time, h head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gpt3_jax.errors import UserError

IMPLS = ("xla", "blockwise", "cudnn", "splash")
# auto on CPU: blockwise from this many positions on (docs/performance.md, "Attention")
CPU_BLOCKWISE_FROM = 256


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
    padding query) gives zeros rather than NaN. Hidden keys' logits are -inf, so their weights are
    exactly 0 and the weights (``exp(logits - max)``) are the only [t, s] value the backward pass
    keeps; the softmax's division is applied to the [t, h] output, after the product with v.
    """
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum("...th,...sh->...ts", q, k, preferred_element_type=jnp.float32) * scale
    logits = jnp.where(mask, logits, -jnp.inf)
    top = logits.max(axis=-1, keepdims=True)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))  # no visible key: all -inf
    weights = jnp.exp(logits - top)
    total = weights.sum(axis=-1, keepdims=True)
    out = jnp.einsum("...ts,...sh->...th", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (out / jnp.where(total > 0, total, 1.0)).astype(v.dtype)


# a banded layer's query blocks: the window, at least this many positions (a 6-key band in blocks
# of 6 would be all overhead), at most ``block``
BAND_MIN_BLOCK = 64
# a dense layer's query blocks: a quarter of the sequence (so the causal skip leaves 10 of 16
# blocks), at least this many positions, at most ``block`` (docs/performance.md, "Attention")
DENSE_MIN_BLOCK = 128


def query_block(t: int, window: int | None, block: int) -> int:
    """The query block ``blockwise`` uses, at most ``block`` and ``t``. For a dense layer a quarter
    of ``t``, at least ``DENSE_MIN_BLOCK``: causal skipping then leaves 10 of 16 blocks to compute,
    where one block of a short sequence computes all of it (T 2048 and block 512: 512). For a
    banded one the window (at least ``BAND_MIN_BLOCK``), so each query block reads two key chunks
    of about W — 2W keys per query — where blocks of ``block`` > W read about ``block`` + W."""
    size = max(t // 4, DENSE_MIN_BLOCK) if window is None else max(window, BAND_MIN_BLOCK)
    return min(size, block, t)


def key_ranges(t: int, window: int | None, size: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
    """The blockwise plan for query blocks of ``size``: per query block [qs, qe), the key chunks
    [ks, ke) its band can reach, each at most ``size`` long. Pure Python on static sizes;
    ``gpt3_jax.info`` counts from it."""
    plan = []
    for qs in range(0, t, size):
        qe = min(qs + size, t)
        first = 0 if window is None else max(0, qs - window + 1)
        chunks = [(ks, min(ks + size, qe)) for ks in range(first, qe, size)]
        plan.append((qs, qe, chunks))
    return plan


def blockwise(q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None, block: int) -> jax.Array:
    """Causal or banded self-attention over q, k, v [b, n, T, h] (key i at position i), computing
    only the key chunks each query block's band reaches, merged by an online softmax."""
    t, scale = q.shape[2], q.shape[-1] ** -0.5
    pos = jnp.arange(t)
    outs = []
    for qs, qe, chunks in key_ranges(t, window, query_block(t, window, block)):
        qb = q[:, :, qs:qe]
        m = jnp.full(qb.shape[:3] + (1,), jnp.finfo(jnp.float32).min, jnp.float32)  # running max
        total = jnp.zeros(qb.shape[:3] + (1,), jnp.float32)  # running softmax denominator
        acc = jnp.zeros(qb.shape, jnp.float32)
        for ks, ke in chunks:
            mask = causal_mask(pos[qs:qe], pos[ks:ke], window)  # (tq, tk)
            s = jnp.einsum("bnth,bnsh->bnts", qb, k[:, :, ks:ke], preferred_element_type=jnp.float32)
            s = jnp.where(mask, s * scale, -jnp.inf)  # hidden: exp gives exactly 0
            # the result does not depend on the running max (it cancels): no gradient through it;
            # it starts finite, so a row with nothing visible yet gets exp(-inf) = 0, not NaN
            m_new = jax.lax.stop_gradient(jnp.maximum(m, s.max(-1, keepdims=True)))
            p = jnp.exp(s - m_new)
            correction = jnp.exp(m - m_new)
            total = total * correction + p.sum(-1, keepdims=True)
            pv = jnp.einsum(
                "bnts,bnsh->bnth", p.astype(v.dtype), v[:, :, ks:ke], preferred_element_type=jnp.float32
            )
            acc = acc * correction + pv
            m = m_new
        outs.append((acc / jnp.where(total > 0, total, 1.0)).astype(q.dtype))
    return jnp.concatenate(outs, axis=2)


def resolve_impl(impl: str, *, backend: str, dtype: jnp.dtype, seq_len: int, d_head: int) -> str:
    """The implementation ``impl`` ("auto" or one of ``IMPLS``) means on ``backend`` for this dtype
    and shape; a choice that cannot run there is a one-line ``UserError``."""
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if impl == "auto":
        if backend == "tpu":
            return "splash"
        if backend == "gpu":
            return "cudnn" if half and d_head <= 256 else "blockwise"
        return "blockwise" if seq_len >= CPU_BLOCKWISE_FROM else "xla"
    if impl == "cudnn":
        if backend != "gpu":
            raise UserError(
                f"model.attention_impl=cudnn needs an NVIDIA GPU, but JAX runs on {backend}; "
                "use auto, xla or blockwise"
            )
        if not half or d_head > 256:
            raise UserError(
                f"model.attention_impl=cudnn needs bfloat16/float16 compute and head dim <= 256 (got "
                f"{jnp.dtype(dtype).name}, {d_head}); set model.dtype=bfloat16 or use blockwise"
            )
    if impl == "splash" and backend != "tpu":
        raise UserError(
            f"model.attention_impl=splash needs a TPU, but JAX runs on {backend}; use auto, xla or blockwise"
        )
    return impl


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    q_pos: jax.Array | None,
    k_pos: jax.Array | None,
    *,
    window: int | None,
    impl: str = "xla",
    block: int = 512,
    shard: tuple | None = None,
) -> jax.Array:
    """Causal (``window`` None) or locally banded attention by positions.

    q [b, n, t, h] at positions q_pos [b, t]; k, v [b, n, s, h] — or rows [b·n, s, h], the KV
    cache's layout — at k_pos [b, s] (-1: no key there; keys in any order) → [b, n, t, h].
    Positions None (both) mean self-attention over a whole sequence, 0 … t-1: only then may
    ``impl`` be other than ``xla`` (an implementation from ``resolve_impl``). ``shard`` is the
    PartitionSpec of q/k/v over the current mesh, for the kernels that run per shard (splash).
    """
    if q_pos is None:
        if impl == "blockwise":
            return blockwise(q, k, v, window=window, block=block)
        if impl == "cudnn":
            return _cudnn(q, k, v, window=window)
        if impl == "splash":
            return _splash(q, k, v, window=window, block=block, shard=shard)
        q_pos = k_pos = jnp.broadcast_to(jnp.arange(q.shape[2]), q.shape[:1] + q.shape[2:3])
    mask = causal_mask(q_pos, k_pos, window)[:, None]  # (b, 1, t, s): shared by the heads
    if k.ndim == 4:
        return attend(q, k, v, mask)
    b, n, t, h = q.shape  # rows: read the cache as it lies
    mask = jnp.broadcast_to(mask, (b, n, t, mask.shape[-1])).reshape(b * n, t, -1)
    return attend(q.reshape(b * n, t, h), k, v, mask).reshape(b, n, t, h)


# --- accelerator kernels: cuDNN (NVIDIA) and Pallas splash (TPU) -----------------------------


def _cudnn(
    q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None, implementation: str = "cudnn"
) -> jax.Array:
    """cuDNN's fused attention. Always ``is_causal=True``: its local window alone would also see
    the future. A band of W keys including the query is ``local_window_size=(W - 1, 0)``.
    (``implementation="xla"`` runs the same call anywhere: the tests check the arguments with it.)"""
    to_btnh = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    out = jax.nn.dot_product_attention(
        to_btnh(q),
        to_btnh(k),
        to_btnh(v),
        is_causal=True,
        local_window_size=None if window is None else (window - 1, 0),
        implementation=implementation,
    )
    return to_btnh(out)


def splash_kernel(n_head: int, t: int, *, window: int | None, block: int, interpret: bool = False):
    """Pallas splash attention for [n, t, h] (one batch row), causal or banded; the mask's empty
    blocks are skipped. ``interpret`` runs it on CPU (tests)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    shape = (t, t)
    one = (
        sm.CausalMask(shape) if window is None else sm.LocalMask(shape, window_size=(window - 1, 0), offset=0)
    )
    b = min(block, t)
    sizes = sk.BlockSizes(
        block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b, block_kv_dkv_compute=b,
        block_q_dq=b, block_kv_dq=b,
    )  # fmt: skip
    return sk.make_splash_mha(
        sm.MultiHeadMask([one] * n_head),
        block_sizes=sizes,
        head_shards=1,
        q_seq_shards=1,
        interpret=interpret,
    )


def _splash(
    q: jax.Array, k: jax.Array, v: jax.Array, *, window: int | None, block: int, shard: tuple | None,
    interpret: bool = False,
) -> jax.Array:  # fmt: skip
    """Splash attention per device shard (batch and heads split as ``shard`` says)."""
    from jax.sharding import PartitionSpec

    def local(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        kernel = splash_kernel(q.shape[1], q.shape[2], window=window, block=block, interpret=interpret)
        return jax.vmap(kernel)(q * q.shape[-1] ** -0.5, k, v)  # splash does not scale the queries

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or shard is None:
        return local(q, k, v)
    spec = PartitionSpec(*shard)
    return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def splash(q, k, v, *, window: int | None, block: int, interpret: bool = False) -> jax.Array:
    """``attention(impl="splash")`` on one device, for tests: q, k, v [b, n, T, h]."""
    return _splash(q, k, v, window=window, block=block, shard=None, interpret=interpret)


def blocks_computed(t: int, window: int | None, size: int) -> float:
    """Score entries per query computed by reading, whole, the chunks ``key_ranges`` plans for
    query blocks of ``size`` (``blockwise``: ``query_block``'s size)."""
    plan = key_ranges(t, window, size)
    return sum((qe - qs) * sum(ke - ks for ks, ke in chunks) for qs, qe, chunks in plan) / t


__all__ = [
    "IMPLS",
    "attend",
    "attention",
    "blocks_computed",
    "causal_mask",
    "key_ranges",
    "query_block",
    "resolve_impl",
]
