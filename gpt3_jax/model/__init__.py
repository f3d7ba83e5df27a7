"""The GPT-3 model family in Flax NNX.

Axis legend, used in einsum strings, weight names and shape comments throughout:

    b batch   t time (queries)   s time (keys)   d model   n heads   h head dim
    f mlp (4·d)   v vocabulary (padded)   l layers (groups of the attention pattern)

Logical axis names on parameters: ``vocab``, ``embed``, ``mlp``, ``heads``, ``head_dim``, ``qkv``,
``position``, ``norm``, ``layers``; on activations: ``act_batch``, ``act_len``, ``act_embed``,
``act_heads``, ``act_mlp``, ``act_vocab``. ``gpt3_jax.sharding`` maps them to mesh axes.
"""

from gpt3_jax.model.attention import attend, attention, causal_mask
from gpt3_jax.model.cache import LayerCache
from gpt3_jax.model.layers import (
    MLP,
    Attention,
    Block,
    Embed,
    LayerNorm,
    check_attention,
    compute_dtype,
    mask_vocab,
)
from gpt3_jax.model.transformer import GPT, BlockGroup, abstract_gpt, init_cache, stack_layers, unstack_layers

__all__ = [
    "GPT",
    "MLP",
    "Attention",
    "Block",
    "BlockGroup",
    "Embed",
    "LayerCache",
    "LayerNorm",
    "abstract_gpt",
    "attend",
    "attention",
    "causal_mask",
    "check_attention",
    "compute_dtype",
    "init_cache",
    "mask_vocab",
    "stack_layers",
    "unstack_layers",
]
