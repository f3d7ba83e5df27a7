"""The GPT-3 decoder: embeddings, a stack of blocks in groups of the attention pattern, final
LayerNorm, tied unembedding.

The attention pattern (``[dense, local]`` by default) is one *group*; the stack holds
``n_groups = n_layer / len(pattern)`` groups, so every layer's attention kind is static. Two
layouts of the same parameters, chosen by ``model.scan_layers``:

- scanned (``true``): each parameter stacked on a leading ``layers`` axis [n_groups, ...], the
  groups run in a ``lax.scan`` (one compiled group body: fast compiles at any depth; the layout
  for TPU and GPU). A KV cache is scanned alongside, stacked the same way.
- per layer (``false``): one set of arrays per group (and one cache per layer), run in a Python
  loop. XLA:CPU copies a layer's weights (and cache) out of a stacked array before using them,
  which dominates memory-bound work such as decoding: GPT-2 124M at batch 1 decodes at 52 tok/s
  per layer and 34 tok/s scanned (``benchmarks/bench_decode.py --layers``, docs/performance.md).

Checkpoints always store the stacked layout; ``stack_layers`` / ``unstack_layers`` convert.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gpt3_jax.config import ModelConfig
from gpt3_jax.model.cache import LayerCache
from gpt3_jax.model.layers import Block, Embed, LayerNorm, compute_dtype, dropout
from gpt3_jax.sharding import DEFAULT_RULES, Rules, constrain, eval_shape

REMAT_POLICIES = {
    "full": None,  # save nothing but the group's input
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep matmul outputs
}

GroupCache = tuple[LayerCache, ...]  # one LayerCache per entry of the attention pattern


class BlockGroup(nnx.Module):
    """One repeat of the attention pattern: a block per entry, e.g. [dense, local]."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES):
        self.blocks = nnx.List([Block(cfg, kind, rngs=rngs, rules=rules) for kind in cfg.attention_pattern])

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array | None,
        cache: GroupCache | None = None,
        dropout_key: jax.Array | None = None,
    ) -> tuple[jax.Array, GroupCache | None]:
        keys = jax.random.split(dropout_key, len(self.blocks)) if dropout_key is not None else None
        new = []
        for i, block in enumerate(self.blocks):
            x, c = block(x, positions, None if cache is None else cache[i], None if keys is None else keys[i])
            new.append(c)
        return x, None if cache is None else tuple(new)


def _stacked_groups(cfg: ModelConfig, rngs: nnx.Rngs, rules: Rules) -> BlockGroup:
    """``n_groups`` BlockGroups whose parameters are stacked on a leading ``layers`` axis."""

    @nnx.split_rngs(splits=cfg.n_groups)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> BlockGroup:
        return BlockGroup(cfg, rngs=rngs, rules=rules)

    return make(rngs)


def _per_layer_groups(stacked: BlockGroup, cfg: ModelConfig, rules: Rules) -> nnx.List:
    """The same parameters as ``stacked``, one BlockGroup per group (the ``scan_layers=false``
    layout), so both layouts of one seed hold equal values."""
    _, state = nnx.split(stacked)
    groups = []
    for pure in unstack_layers({"groups": state.to_pure_dict()}, cfg)["groups"].values():
        graphdef, one = nnx.split(eval_shape(lambda: BlockGroup(cfg, rngs=nnx.Rngs(0), rules=rules), rules))
        one.replace_by_pure_dict(pure)
        groups.append(nnx.merge(graphdef, one))
    return nnx.List(groups)


class GPT(nnx.Module):
    """GPT-3 decoder: ``logits, cache = model(tokens, positions, cache=cache)``.

    ``rules`` is the sharding rules table every activation constraint inside uses (it travels in
    the model's graph definition, so a model built with custom rules trains and generates with them).
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, rules: Rules = DEFAULT_RULES):
        self.cfg = cfg
        self.rules = rules
        self.embed = Embed(cfg, rngs=rngs, rules=rules)
        stacked = _stacked_groups(cfg, rngs, rules)
        self.groups = stacked if cfg.scan_layers else _per_layer_groups(stacked, cfg, rules)
        self.ln_f = LayerNorm(cfg, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        *,
        cache: Any = None,
        dropout_key: jax.Array | None = None,
        last_only: bool = False,
    ) -> tuple[jax.Array, Any]:
        """tokens [b, t] int at positions [b, t] (None: 0..t-1 in every row; -1 marks padding) → float32
        logits [b, t, padded v] (``last_only``: [b, 1, v], the last position's), and the cache.

        ``cache`` (from ``init_cache``) holds the keys and values of earlier calls: the tokens
        attend to those too, and the returned cache holds theirs as well. ``dropout_key`` turns
        dropout on (training); None = deterministic.
        """
        if positions is None and cache is not None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        cfg = self.cfg
        keys = None
        if dropout_key is not None and cfg.dropout > 0:
            dropout_key, stack_key = jax.random.split(dropout_key)
            keys = jax.random.split(stack_key, cfg.n_groups)
        else:
            dropout_key = None
        x = dropout(self.embed(tokens, positions), cfg.dropout, dropout_key)  # (b, t, d)
        x, cache = self.run_groups(x, positions, cache, keys)
        if last_only:
            x = x[:, -1:]
        return self.embed.unembed(self.ln_f(x)), cache  # (b, t, v)

    def run_groups(
        self, x: jax.Array, positions: jax.Array | None, cache: Any, keys: jax.Array | None
    ) -> tuple[jax.Array, Any]:
        """The stack of blocks, [b, t, d] → [b, t, d], scanned or per layer, with remat."""
        cfg = self.cfg
        pin = lambda x: constrain(x, ("act_batch", "act_len", "act_embed"), self.rules)  # noqa: E731

        def group_body(graphdef: nnx.GraphDef, x: jax.Array, state: Any, c: Any, key: Any) -> tuple[Any, Any]:
            return nnx.merge(graphdef, state)(x, positions, c, key)

        if not cfg.scan_layers:
            new = []
            for g, group in enumerate(self.groups):
                graphdef, state = nnx.split(group)
                body = partial(group_body, graphdef)
                if cfg.remat != "none":
                    body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=True)
                x, c = body(x, state, None if cache is None else cache[g], None if keys is None else keys[g])
                x = pin(x)
                new.append(c)
            return x, None if cache is None else tuple(new)

        graphdef, state = nnx.split(self.groups)

        def body(x: jax.Array, xs: tuple[Any, Any, Any]) -> tuple[jax.Array, Any]:
            group_state, layer, key = xs
            x, layer = group_body(graphdef, x, group_state, layer, key)
            return pin(x), layer

        if cfg.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        x, cache = jax.lax.scan(body, x, (state, cache, keys))
        return x, cache

    def init_cache(self, batch: int, length: int, dtype: Any = None) -> Any:
        """An empty cache for ``batch`` rows of texts up to ``length`` tokens: per pattern entry a
        ``LayerCache`` (dense: ``length`` slots; local: ``min(local_window, length)``), stacked
        [n_groups, ...] when the layers are scanned, else one tuple per group."""
        return init_cache(self.cfg, batch, length, dtype)


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype: Any = None) -> Any:
    """``GPT.init_cache`` for a config (see there)."""
    dtype = dtype or compute_dtype(cfg)
    group = tuple(
        LayerCache.empty(
            batch, cfg.n_head, min(cfg.local_window, length) if kind == "local" else length, cfg.d_head, dtype
        )
        for kind in cfg.attention_pattern
    )
    if cfg.scan_layers:
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.n_groups, *a.shape)), group)
    return tuple(group for _ in range(cfg.n_groups))


def abstract_gpt(cfg: ModelConfig, rules: Rules = DEFAULT_RULES) -> tuple[nnx.GraphDef, nnx.State]:
    """GPT's static graph and abstract parameters (shapes, dtypes, logical names): no memory, no
    device, inside or outside a mesh context."""
    return nnx.split(eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0), rules=rules), rules))  # only nnx.Param


# --- the two layouts ------------------------------------------------------------------------


def unstack_layers(tree: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """A parameter pure dict (or one of the same structure, e.g. an Adam moment) in the stacked
    layout → the per-layer layout: ``groups.blocks.j.<leaf>[g]`` → ``groups.g.blocks.j.<leaf>``."""
    blocks = tree["groups"]["blocks"]
    groups = {g: {"blocks": jax.tree.map(lambda a, g=g: a[g], blocks)} for g in range(cfg.n_groups)}
    return {**tree, "groups": groups}


def stack_layers(tree: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """The inverse of ``unstack_layers``."""
    groups = [tree["groups"][g]["blocks"] for g in range(cfg.n_groups)]
    return {**tree, "groups": {"blocks": jax.tree.map(lambda *a: jnp.stack(a), *groups)}}
