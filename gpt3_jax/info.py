"""Model size and training cost, counted from the real model's abstract parameter shapes.

Nothing here is a closed formula for the parameter count: ``count`` builds ``GPT(cfg)`` with
``nnx.eval_shape`` (shapes only, no memory, no devices touched beyond the default backend) and
sums what it finds, so the numbers follow the model code wherever it goes.

Conventions:

- **Non-embedding parameters** are all parameters except the token (``wte``) and position
  (``wpe``) embeddings, as in Kaplan et al. 2020. The unembedding is tied to ``wte``, so it is not
  counted twice.
- **Training FLOPs per token** = 6·(matmul weights in the blocks + v·d for the unembedding)
  + attention, with v the padded vocabulary (the matmul the hardware runs). Biases, LayerNorms,
  softmax and GELU are left out (< 1%). The attention term is 12·d·k per layer (forward QKᵀ and
  AV are 2·d·k each, backward twice that), k being keys per query:
  - ``model_flops_per_token`` counts the keys a query sees, k̄: T/2 for a dense causal layer (so
    6·T·d, the usual causal-attention figure) and w − w²/(2T) with w = min(window, T) for a
    locally banded one. MFU is computed from this (the work the model needs).
  - ``flops_per_token`` counts what the attention implementation computes
    (``model.attention_impl`` as resolved on this backend): ``xla`` scores every key, k = T;
    ``blockwise`` and ``splash`` the whole key chunks their band reaches
    (``model.attention.blocks_computed``: ``blockwise`` in query blocks of
    ``attention.query_block``, the window for a banded layer; ``splash`` in blocks of
    ``model.attention_block``); ``cudnn`` is counted as the band itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gpt3_jax.config import ModelConfig

# Which kind of matrix each parameter is, by its path's last two names (GPT-2 naming).
KINDS: dict[tuple[str, str], str] = {
    ("embed", "wte"): "token_embedding",
    ("embed", "wpe"): "position_embedding",
    ("attn", "c_attn_w"): "attention_qkv",
    ("attn", "c_proj_w"): "attention_out",
    ("mlp", "c_fc_w"): "mlp_in",
    ("mlp", "c_proj_w"): "mlp_out",
}
NORMS_AND_BIASES = "norms_and_biases"
EMBEDDINGS = ("token_embedding", "position_embedding")
BLOCK_MATMULS = ("attention_qkv", "attention_out", "mlp_in", "mlp_out")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Sizes and cost of one model config. ``breakdown`` maps a kind of matrix to its count."""

    params: int
    non_embedding_params: int
    flops_per_token: float  # what the attention implementation computes
    attention_flops_per_token: float
    model_flops_per_token: float  # the keys each query sees only (MFU)
    model_attention_flops_per_token: float
    attention_impl: str
    breakdown: dict[str, int]
    vocab_size: int
    padded_vocab: int
    layers: int
    d_model: int
    n_head: int
    d_head: int
    n_ctx: int
    layer_types: dict[str, int]  # e.g. {"dense": 48, "local": 48}
    local_window: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _kind(path: tuple[Any, ...]) -> str:
    names = tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    return KINDS.get(names[-2:], NORMS_AND_BIASES)


def param_breakdown(cfg: ModelConfig) -> dict[str, int]:
    """Parameter count per kind of matrix, from ``nnx.eval_shape`` of ``GPT(cfg)``."""
    import math

    import jax

    from gpt3_jax.model import abstract_gpt

    _, params = abstract_gpt(cfg)
    counts = dict.fromkeys((*EMBEDDINGS, *BLOCK_MATMULS, NORMS_AND_BIASES), 0)
    leaves = jax.tree_util.tree_leaves_with_path(params.to_pure_dict())
    for path, leaf in leaves:
        counts[_kind(path)] += math.prod(leaf.shape)
    return counts


def attention_flops_per_token(cfg: ModelConfig, impl: str | None = None) -> float:
    """Training FLOPs per token of the score and value matmuls, summed over layers: the keys each
    query sees (``impl`` None) or what implementation ``impl`` computes (see the module)."""
    from gpt3_jax.model.attention import blocks_computed, query_block

    t, d = cfg.n_ctx, cfg.d_model
    total = 0.0
    for kind in cfg.layer_types():
        window = min(cfg.local_window, t) if kind == "local" else None
        if impl == "xla":
            keys = t
        elif impl == "blockwise":
            keys = blocks_computed(t, window, query_block(t, window, cfg.attention_block))
        elif impl == "splash":  # its blocks are attention_block whatever the window
            keys = blocks_computed(t, window, min(cfg.attention_block, t))
        else:
            keys = t / 2 if window is None else window - window * window / (2 * t)
        total += 12 * d * keys
    return total


def count(cfg: ModelConfig) -> ModelInfo:
    """Parameters (total, non-embedding, per kind) and training FLOPs per token of ``GPT(cfg)``."""
    from gpt3_jax.model import check_attention

    impl = check_attention(cfg)
    breakdown = param_breakdown(cfg)
    params = sum(breakdown.values())
    non_embedding = params - sum(breakdown[k] for k in EMBEDDINGS)
    unembed = breakdown["token_embedding"]  # tied: the unembedding matmul is v_padded·d
    matmuls = 6 * (sum(breakdown[k] for k in BLOCK_MATMULS) + unembed)
    needed, computed = attention_flops_per_token(cfg), attention_flops_per_token(cfg, impl)
    types = cfg.layer_types()
    return ModelInfo(
        params=params,
        non_embedding_params=non_embedding,
        flops_per_token=matmuls + computed,
        attention_flops_per_token=computed,
        model_flops_per_token=matmuls + needed,
        model_attention_flops_per_token=needed,
        attention_impl=impl,
        breakdown=breakdown,
        vocab_size=cfg.vocab_size,
        padded_vocab=cfg.padded_vocab,
        layers=cfg.n_layer,
        d_model=cfg.d_model,
        n_head=cfg.n_head,
        d_head=cfg.d_head,
        n_ctx=cfg.n_ctx,
        layer_types={kind: types.count(kind) for kind in sorted(set(types))},
        local_window=cfg.local_window,
    )


def human(n: float) -> str:
    """12_345_678 → '12.35M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"
