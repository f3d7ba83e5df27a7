"""The GPT-3 building blocks as Flax NNX modules: embedding, LayerNorm, attention, MLP, block.

Weight names follow GPT-2 (``wte``, ``wpe``, ``ln_1``, ``attn.c_attn_w``, ``mlp.c_fc_w`` …) so that
Hugging Face interchange is a rename table. Axes: see ``gpt3_jax.model``.
Each module takes a ``ModelConfig`` and, optionally, the sharding rules table its activation
constraints use (``gpt3_jax.sharding``); it works on its own inside any other NNX model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax.config import ModelConfig
from gpt3_jax.model.attention import attention, resolve_impl
from gpt3_jax.model.cache import LayerCache
from gpt3_jax.sharding import DEFAULT_RULES, Rules, constrain, logical_to_spec, param

_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    """The dtype activations and matmuls run in; ``auto`` = bfloat16 off CPU, float32 on CPU."""
    if cfg.dtype == "auto":
        return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    return jnp.dtype(cfg.dtype)


def check_attention(cfg: ModelConfig) -> str:
    """The attention implementation ``cfg`` runs on the default backend at full context; a one-line
    ``UserError`` when it cannot run there (call before compiling)."""
    return resolve_impl(
        cfg.attention_impl,
        backend=jax.default_backend(),
        dtype=compute_dtype(cfg),
        seq_len=cfg.n_ctx,
        d_head=cfg.d_head,
    )


def mask_vocab(logits: jax.Array, size: int) -> jax.Array:
    """Logits [..., v_padded] with ids >= ``size`` (vocabulary padding, or ids a tokenizer lacks)
    set to the lowest float: they never take probability mass or get chosen. When ``size`` covers
    every column the logits come back as they are: the select would be a full pass over [.., v]
    in the forward and again in the backward for nothing (``benchmarks/bench_loss.py``)."""
    if size >= logits.shape[-1]:
        return logits
    return jnp.where(jnp.arange(logits.shape[-1]) < size, logits, jnp.finfo(logits.dtype).min)


def project(spec: str, x: jax.Array, w: jax.Array, **kwargs: object) -> jax.Array:
    """``jnp.einsum(spec, x, w)`` for an activation x [b, t, ...] and a weight, with b and t merged
    into one row axis ``m`` for the product: ``spec`` names that axis ``m`` (``"md,df->mf"``) and the
    result comes back as [b, t, ...].

    Written over rows, the weight's gradient is a product with one contracted axis (m). Over
    [b, t] it contracts two, and XLA:CPU first rewrites such a product into the canonical one by
    transposing an operand together with the elementwise work that makes it: in the MLP that
    alone made forward + backward 2x slower (``benchmarks/bench_projection.py``; measured on CPU
    only). The merge is a free reshape: b is the major axis (and the sharded one), t follows it
    (with ``act_len`` mapped to a mesh axis it would need a reshard; the default rules map it to
    none)."""
    b, t = x.shape[:2]
    y = jnp.einsum(spec, x.reshape(b * t, *x.shape[2:]), w, **kwargs)
    return y.reshape(b, t, *y.shape[1:])


_GELU_C = 0.7978845608028654  # sqrt(2 / pi)
_GELU_A = 0.044715


def _gelu_and_slope(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GPT-2's tanh GELU of x and its derivative, computed in float32 with one tanh."""
    x32 = x.astype(jnp.float32)
    t = jnp.tanh(_GELU_C * (x32 + _GELU_A * x32**3))
    y = 0.5 * x32 * (1 + t)
    slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x32 * x32)
    return y.astype(x.dtype), slope.astype(x.dtype)


@jax.custom_jvp
def gelu(x: jax.Array) -> jax.Array:
    """GPT-2's tanh GELU (``jax.nn.gelu(x, approximate=True)``, computed in float32), differentiated
    by hand: its derivative is one elementwise pass sharing the forward's tanh, so reverse mode
    keeps a single array (the slope) for the backward, where autodiff of the formula keeps several
    intermediates of the MLP's width. With layers scanned each is a stacked residual
    [layers, b·t, 4d], written in the forward and read in the backward (docs/performance.md)."""
    return _gelu_and_slope(x)[0]


@gelu.defjvp
def _gelu_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    (x,), (dx,) = primals, tangents
    y, slope = _gelu_and_slope(x)
    return y, slope * dx


def _normal(std: float) -> jax.nn.initializers.Initializer:
    return jax.nn.initializers.normal(stddev=std)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; identity when ``key`` is None (evaluation) or the rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm over the model axis, computed in float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.eps = cfg.layer_norm_eps
        self.dtype = compute_dtype(cfg)
        self.scale = param(rngs, _ones, (cfg.d_model,), ("norm",))
        self.bias = param(rngs, _zeros, (cfg.d_model,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class Embed(nnx.Module):
    """Token and learned position embeddings; ``unembed`` reuses the token table (tied)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES):
        self.dtype = compute_dtype(cfg)
        self.rules = rules
        self.wte = param(rngs, _normal(cfg.init_std), (cfg.padded_vocab, cfg.d_model), ("vocab", "embed"))
        self.wpe = param(rngs, _normal(cfg.init_std), (cfg.n_ctx, cfg.d_model), ("position", "embed"))

    def __call__(self, tokens: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """tokens, positions [b, t] int (None: 0 … t-1) → [b, t, d]. Position -1 (padding) embeds
        as position 0."""
        if positions is None:
            pos = self.wpe[...][None, : tokens.shape[1]]
        else:
            pos = jnp.take(self.wpe[...], jnp.maximum(positions, 0), axis=0)
        x = jnp.take(self.wte[...], tokens, axis=0) + pos
        return constrain(x.astype(self.dtype), ("act_batch", "act_len", "act_embed"), self.rules)

    def unembed(self, x: jax.Array) -> jax.Array:
        """[b, t, d] → logits [b, t, v] in float32 (v is the padded vocabulary)."""
        w = self.wte[...].astype(x.dtype)
        logits = project("md,vd->mv", x, w, preferred_element_type=jnp.float32)
        return constrain(logits, ("act_batch", "act_len", "act_vocab"), self.rules)


class Attention(nnx.Module):
    """Causal self-attention with a fused QKV projection; ``kind`` is ``dense`` or ``local``.

    A ``local`` layer is GPT-3's locally banded attention: each query sees the ``local_window``
    most recent positions, itself included.
    """

    def __init__(
        self, cfg: ModelConfig, kind: str = "dense", *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES
    ):
        if kind not in ("dense", "local"):
            raise ValueError(f"attention kind must be 'dense' or 'local', got {kind!r}")
        d, n, h = cfg.d_model, cfg.n_head, cfg.d_head
        self.kind = kind
        self.window = cfg.local_window if kind == "local" else None
        self.impl, self.block = cfg.attention_impl, cfg.attention_block
        self.dtype = compute_dtype(cfg)
        self.rules = rules
        resid_std = cfg.init_std / (2 * cfg.n_layer) ** 0.5
        self.c_attn_w = param(
            rngs, _normal(cfg.init_std), (d, 3, n, h), ("embed", "qkv", "heads", "head_dim")
        )
        self.c_attn_b = param(rngs, _zeros, (3, n, h), ("qkv", "heads", "head_dim"))
        self.c_proj_w = param(rngs, _normal(resid_std), (n, h, d), ("heads", "head_dim", "embed"))
        self.c_proj_b = param(rngs, _zeros, (d,), ("embed",))

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """[b, t, d] → q, k, v, each [b, n, t, h]."""
        w = self.c_attn_w[...].astype(self.dtype)
        qkv = project("md,dknh->mknh", x, w) + self.c_attn_b[...].astype(self.dtype)  # (b, t, 3, n, h)
        qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, b, n, t, h)
        q, k, v = constrain(qkv, (None, "act_batch", "act_heads", "act_len", None), self.rules)
        return q, k, v

    def out(self, y: jax.Array) -> jax.Array:
        """[b, n, t, h] → [b, t, d], as one [b·t, n·h] × [n·h, d] product.

        Heads are merged (n major, so a heads-sharded weight stays sharded the same way): over
        [n, h] XLA:CPU copied the weight transposed to [h, n, d] in every decode step, inside the
        loop (``tests/test_sampling.py::test_the_decode_loop_reads_the_output_projection_as_it_lies``).
        """
        b, n, t, h = y.shape
        w = self.c_proj_w[...].astype(self.dtype).reshape(n * h, -1)
        y = y.transpose(0, 2, 1, 3).reshape(b, t, n * h)  # (b, t, n·h)
        return project("mf,fd->md", y, w) + self.c_proj_b[...].astype(self.dtype)

    def __call__(
        self, x: jax.Array, positions: jax.Array | None = None, cache: LayerCache | None = None
    ) -> tuple[jax.Array, LayerCache | None]:
        """x [b, t, d] at positions [b, t] (-1: padding; None: 0 … t-1 in every row) → ([b, t, d],
        the updated cache).

        Without a cache and explicit positions the attention runs in ``model.attention_impl``.
        With a cache the queries also see the keys it holds: one new token is stored first and
        attends over the cache as it lies (in rows, see ``model.attention``); several attend over
        the cache's keys and their own, then are stored.
        """
        q, k, v = self.qkv(x)  # (b, n, t, h)
        if positions is None and cache is not None:
            positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        if cache is None:
            impl = resolve_impl(
                self.impl,
                backend=jax.default_backend(),
                dtype=q.dtype,
                seq_len=x.shape[1],
                d_head=q.shape[-1],
            )
            shard = logical_to_spec(("act_batch", "act_heads", "act_len", None), self.rules)
            y = attention(
                q,
                k,
                v,
                positions,
                positions,
                window=self.window,
                impl=impl,
                block=self.block,
                shard=tuple(shard),
            )
        elif x.shape[1] == 1:
            cache = cache.write(k, v, positions).constrain(self.rules)
            y = attention(q, cache.k, cache.v, positions, cache.pos, window=self.window)
        else:
            b = x.shape[0]
            keys, values = (
                jnp.concatenate([cache.heads(c, b).astype(a.dtype), a], axis=2)
                for c, a in ((cache.k, k), (cache.v, v))
            )
            k_pos = jnp.concatenate([cache.pos, positions], axis=1)
            y = attention(q, keys, values, positions, k_pos, window=self.window)
            cache = cache.write(k, v, positions).constrain(self.rules)
        return self.out(y), cache


class MLP(nnx.Module):
    """d → 4d → d with GELU (GPT-2's tanh approximation)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES):
        d, f = cfg.d_model, cfg.d_ff
        self.dtype = compute_dtype(cfg)
        self.rules = rules
        resid_std = cfg.init_std / (2 * cfg.n_layer) ** 0.5
        self.c_fc_w = param(rngs, _normal(cfg.init_std), (d, f), ("embed", "mlp"))
        self.c_fc_b = param(rngs, _zeros, (f,), ("mlp",))
        self.c_proj_w = param(rngs, _normal(resid_std), (f, d), ("mlp", "embed"))
        self.c_proj_b = param(rngs, _zeros, (d,), ("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = project("md,df->mf", x, self.c_fc_w[...].astype(self.dtype))
        h = gelu(h + self.c_fc_b[...].astype(self.dtype))
        h = constrain(h, ("act_batch", "act_len", "act_mlp"), self.rules)
        out = project("mf,fd->md", h, self.c_proj_w[...].astype(self.dtype))
        return out + self.c_proj_b[...].astype(self.dtype)


class Block(nnx.Module):
    """Pre-LayerNorm transformer block: two residual lines."""

    def __init__(
        self, cfg: ModelConfig, kind: str = "dense", *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES
    ):
        self.dropout = cfg.dropout
        self.rules = rules
        self.ln_1 = LayerNorm(cfg, rngs=rngs)
        self.attn = Attention(cfg, kind, rngs=rngs, rules=rules)
        self.ln_2 = LayerNorm(cfg, rngs=rngs)
        self.mlp = MLP(cfg, rngs=rngs, rules=rules)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array | None = None,
        cache: LayerCache | None = None,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerCache | None]:
        """x [b, t, d], positions [b, t] (None: 0 … t-1) → ([b, t, d], cache). ``dropout_key``
        None = no dropout."""
        k1, k2 = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        y, cache = self.attn(self.ln_1(x), positions, cache)
        x = x + dropout(y, self.dropout, k1)
        x = x + dropout(self.mlp(self.ln_2(x)), self.dropout, k2)
        return constrain(x, ("act_batch", "act_len", "act_embed"), self.rules), cache
