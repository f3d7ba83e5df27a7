"""The public API: lazy import, names that resolve, our modules inside a foreign NNX model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gpt3_jax
from gpt3_jax import Attention, Block, ModelConfig

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_import_does_no_work() -> None:
    code = (
        "import sys, gpt3_jax; "
        "heavy = {'jax', 'flax', 'numpy', 'optax', 'orbax', 'omegaconf'} & set(sys.modules); "
        "assert not heavy, heavy; "
        "assert gpt3_jax.__version__"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", gpt3_jax.__all__)
def test_public_names_resolve(name: str) -> None:
    assert getattr(gpt3_jax, name) is not None
    assert name in dir(gpt3_jax)


def test_model_package_names_resolve() -> None:
    import gpt3_jax.model

    for name in gpt3_jax.model.__all__:
        assert getattr(gpt3_jax.model, name) is not None
    with pytest.raises(AttributeError):
        gpt3_jax.no_such_name  # noqa: B018


class Tagger(nnx.Module):
    """A foreign model: its own embedding and head around our Attention and Block."""

    def __init__(self, cfg: ModelConfig, n_tags: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(50, cfg.d_model, rngs=rngs)
        self.attn = Attention(cfg, "local", rngs=rngs)
        self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.block = Block(cfg, "dense", rngs=rngs)
        self.head = nnx.Linear(cfg.d_model, n_tags, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        h = self.embed(tokens)  # (b, t, d)
        y, _ = self.attn(self.norm(h), positions)  # (y, cache): no cache here
        h, _ = self.block(h + y, positions)
        return self.head(h)  # (b, t, tags)


def test_foreign_module_trains_one_step() -> None:
    cfg = ModelConfig(
        n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=1, local_window=4, dtype="float32"
    )
    model = Tagger(cfg, n_tags=5, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, 50)
    tags = tokens % 5

    def loss_fn(m: Tagger) -> jax.Array:
        return optax.softmax_cross_entropy_with_integer_labels(m(tokens), tags).mean()

    @nnx.jit
    def step(m: Tagger, opt: nnx.Optimizer) -> jax.Array:
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    qkv_before = np.asarray(model.attn.c_attn_w[...]).copy()
    mlp_before = np.asarray(model.block.mlp.c_fc_w[...]).copy()
    before = step(model, optimizer)
    after = loss_fn(model)
    assert after < before
    assert not np.allclose(qkv_before, model.attn.c_attn_w[...])  # our params got gradients
    assert not np.allclose(mlp_before, model.block.mlp.c_fc_w[...])
    assert model.block.attn.c_attn_w.shape == (32, 3, 4, 8)  # [d, 3, n, h]


def test_local_attention_inside_foreign_module_respects_window() -> None:
    """Our local layer keeps its meaning outside our model: a token beyond the window is unseen."""
    cfg = ModelConfig(
        n_layer=2, d_model=32, n_head=4, n_ctx=16, vocab_size=1, local_window=4, dtype="float32"
    )
    attn = Attention(cfg, "local", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 16, 32))
    positions = jnp.arange(16)[None]
    moved = x.at[0, 3].add(1.0)  # position 3 is outside the window of query 7 (sees 4..7)
    (out, _), (out_moved, _) = attn(x, positions), attn(moved, positions)
    np.testing.assert_allclose(out[0, 7:], out_moved[0, 7:], atol=1e-6)
    assert not np.allclose(out[0, 3:7], out_moved[0, 3:7])


def test_docs_api_example_runs(capsys) -> None:
    """Run every ```python block of docs/api.md, in order, in one namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 1
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    assert "loss" in capsys.readouterr().out
