"""The GPT-3 decoder: embeddings, a stack of blocks scanned in groups, final LayerNorm, tied unembed.

The attention pattern (``[dense, local]`` by default) is one *group*; the stack holds
``n_layer / len(pattern)`` groups with their parameters stacked on a leading ``layers`` axis, so
inside the scanned body every layer's attention type is static. ``scan_layers=False`` runs the
same stacked parameters in a Python loop (same checkpoints, different compile).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax import sharding
from gpt3_jax.config import ModelConfig
from gpt3_jax.model.layers import Block, Embed, LayerNorm, dropout
from gpt3_jax.sharding import constrain

REMAT_POLICIES = {
    "full": None,  # save nothing but the group's input
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}


def abstract_gpt(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State]:
    """GPT's static graph and abstract parameters (shapes, dtypes, logical names): no memory, no
    device, inside or outside a mesh context."""
    return nnx.split(sharding.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))  # only nnx.Param


class BlockGroup(nnx.Module):
    """One repeat of the attention pattern: a block per entry, e.g. [dense, local]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(cfg, kind, rngs=rngs) for kind in cfg.attention_pattern])

    def __call__(self, x: jax.Array, positions: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
        keys = jax.random.split(dropout_key, len(self.blocks)) if dropout_key is not None else None
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if keys is None else keys[i])
        return x


def _stacked_groups(cfg: ModelConfig, rngs: nnx.Rngs) -> BlockGroup:
    """``n_groups`` BlockGroups whose parameters are stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=cfg.n_groups)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> BlockGroup:
        return BlockGroup(cfg, rngs=rngs)

    return make(rngs)


class GPT(nnx.Module):
    """GPT-3 decoder. ``model(tokens)`` with int tokens [b, t] → float32 logits [b, t, padded v]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(cfg, rngs=rngs)
        self.groups = _stacked_groups(cfg, rngs)
        self.ln_f = LayerNorm(cfg, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """tokens [b, t] int, positions [b, t] (default 0..t-1) → logits [b, t, padded v] float32.

        ``dropout_key`` turns dropout on (training); None = deterministic.
        """
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        cfg = self.cfg
        keys = None
        if dropout_key is not None and cfg.dropout > 0:
            dropout_key, stack_key = jax.random.split(dropout_key)
            keys = jax.random.split(stack_key, cfg.n_groups)
        else:
            dropout_key = None
        x = dropout(self.embed(tokens, positions), cfg.dropout, dropout_key)  # (b, t, d)
        x = self.run_groups(x, positions, keys)
        return self.embed.unembed(self.ln_f(x))  # (b, t, v)

    def run_groups(self, x: jax.Array, positions: jax.Array, keys: jax.Array | None) -> jax.Array:
        """The stack of blocks, [b, t, d] → [b, t, d], scanned or unrolled, with remat."""
        graphdef, state = nnx.split(self.groups)

        def body(x: jax.Array, xs: tuple[Any, jax.Array | None]) -> tuple[jax.Array, None]:
            group_state, key = xs
            x = nnx.merge(graphdef, group_state)(x, positions, key)
            return constrain(x, ("act_batch", "act_len", "act_embed")), None

        if self.cfg.remat != "none":
            body = jax.checkpoint(
                body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=not self.cfg.scan_layers
            )
        if self.cfg.scan_layers:
            x, _ = jax.lax.scan(body, x, (state, keys))
            return x
        for i in range(self.cfg.n_groups):
            x, _ = body(x, jax.tree.map(lambda a, i=i: a[i], (state, keys)))
        return x
