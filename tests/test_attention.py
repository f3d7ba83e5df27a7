"""Every attention implementation equals the masked reference (``xla``), forward and gradients;
``blockwise`` reads only the key chunks the band reaches; ``auto`` and bad choices."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt3_jax.errors import UserError
from gpt3_jax.model import GPT, attention
from gpt3_jax.model.attention import (
    _cudnn,
    blocks_computed,
    blockwise,
    key_ranges,
    query_block,
    resolve_impl,
    splash,
)

WINDOWS = [None, 1, 6, 17, 64]


def _qkv(t: int, h: int = 16, seed: int = 0) -> tuple[jax.Array, ...]:
    return tuple(jax.random.normal(jax.random.key(seed + i), (2, 3, t, h)) for i in range(3))


def _grads(f, q, k, v):
    """Gradients of f(q, k, v) · a fixed random cotangent, w.r.t. q, k and v."""
    cot = jax.random.normal(jax.random.key(9), q.shape)
    return jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) * cot), argnums=(0, 1, 2))(q, k, v)


def _reference(q, k, v, window):
    return attention(q, k, v, None, None, window=window, impl="xla")


# (window, block, positions): at 40 positions blocks of 16 are 3 (the last short), of 40 one; at
# 200, bands wider than BAND_MIN_BLOCK take query blocks of the window (70, 100: the last short)
# and a dense layer with ``block`` below DENSE_MIN_BLOCK keeps ``block``
WIDE_BANDS = [(70, 128, 200), (100, 512, 200), (None, 64, 200)]
# dense at the default block: queries in blocks of DENSE_MIN_BLOCK (128, 128, then 44)
BLOCKWISE_CASES = [(w, b, 40) for w in WINDOWS for b in (16, 40)] + WIDE_BANDS + [(None, 512, 300)]


@pytest.mark.parametrize("window,block,t", BLOCKWISE_CASES)
def test_blockwise_equals_reference_forward_and_gradients(window, block, t) -> None:
    q, k, v = _qkv(t)
    np.testing.assert_allclose(
        blockwise(q, k, v, window=window, block=block), _reference(q, k, v, window), atol=2e-6
    )
    ours = _grads(lambda q, k, v: blockwise(q, k, v, window=window, block=block), q, k, v)
    ref = _grads(lambda q, k, v: _reference(q, k, v, window), q, k, v)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_blockwise_plan_reads_only_the_band() -> None:
    """T 2048, window 256: query blocks of 256 (the window, whatever ``block`` ≥ 256 is) each read
    their own block and the one before (2 × 256 keys, the first only 1), not the 2048 a masked T×T
    product computes, nor the 512 + 255 that query blocks of 512 would read."""
    for block in (256, 512, 1024):
        assert query_block(2048, 256, block) == 256
    plan = key_ranges(2048, 256, 256)
    assert [len(chunks) for _, _, chunks in plan] == [1] + [2] * 7
    assert plan[3] == (768, 1024, [(513, 769), (769, 1024)])
    assert blocks_computed(2048, 256, 256) == (256 * 256 + 7 * 256 * 511) / 2048
    assert blocks_computed(2048, 256, 512) == (512 * 512 + 3 * 512 * 767) / 2048  # blocks of 512
    assert query_block(2048, 256, 128) == 128  # at most ``block``
    assert query_block(2048, 6, 512) == 64  # at least BAND_MIN_BLOCK
    # dense: a quarter of the sequence, at least DENSE_MIN_BLOCK (128), at most ``block`` and t
    lengths = (64, 256, 300, 1024, 2048, 4096)
    assert [query_block(t, None, 512) for t in lengths] == [64, 128, 128, 256, 512, 512]
    assert query_block(1024, None, 64) == 64
    for window, block, t in WIDE_BANDS:
        assert query_block(t, window, block) == (block if window is None else window)
    assert blocks_computed(2048, None, 256) == sum(256 * 256 * (i + 1) for i in range(8)) / 2048  # half+
    # every visible key is read: a naive count of the band's keys per query never exceeds the plan
    for t, w, b in ((100, 7, 16), (64, None, 8), (50, 64, 16)):
        for qs, qe, chunks in key_ranges(t, w, b):
            read = {j for ks, ke in chunks for j in range(ks, ke)}
            for i in range(qs, qe):
                assert set(range(0 if w is None else max(0, i - w + 1), i + 1)) <= read


@pytest.mark.parametrize("window", [None, 100])
def test_splash_equals_reference_in_interpret_mode(window) -> None:
    q, k, v = _qkv(256, h=64)
    np.testing.assert_allclose(
        splash(q, k, v, window=window, block=128, interpret=True), _reference(q, k, v, window), atol=2e-6
    )


@pytest.mark.parametrize("window", [None, 6])
def test_cudnn_call_arguments_mean_our_mask(window) -> None:
    """The cuDNN path's call (layout, is_causal, local_window_size=(W-1, 0)), run by
    jax.nn.dot_product_attention's XLA implementation: the GPU runs the same call with cudnn."""
    q, k, v = _qkv(40)
    np.testing.assert_allclose(
        _cudnn(q, k, v, window=window, implementation="xla"), _reference(q, k, v, window), atol=2e-6
    )


def test_model_with_blockwise_equals_model_with_xla(tiny_model_config) -> None:
    # two layers: one dense, one banded (the pattern alternates)
    cfg = dataclasses.replace(tiny_model_config, n_layer=2, attention_impl="xla", attention_block=32)
    ref = GPT(cfg, rngs=nnx.Rngs(0))
    blocked = GPT(dataclasses.replace(cfg, attention_impl="blockwise"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 64), 0, cfg.vocab_size)
    forward = nnx.jit(lambda model: model(tokens)[0])
    np.testing.assert_allclose(forward(blocked), forward(ref), atol=2e-5)

    @nnx.jit
    def grads(model):
        return nnx.grad(lambda m: jnp.mean(m(tokens)[0] ** 2))(model)

    for a, b in zip(jax.tree.leaves(grads(blocked)), jax.tree.leaves(grads(ref)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)


def test_auto_and_unavailable_choices() -> None:
    f32, bf16 = jnp.float32, jnp.bfloat16
    assert resolve_impl("auto", backend="cpu", dtype=f32, seq_len=64, d_head=64) == "xla"
    assert resolve_impl("auto", backend="cpu", dtype=f32, seq_len=255, d_head=64) == "xla"
    assert resolve_impl("auto", backend="cpu", dtype=f32, seq_len=256, d_head=64) == "blockwise"
    assert resolve_impl("auto", backend="cpu", dtype=f32, seq_len=2048, d_head=64) == "blockwise"
    assert resolve_impl("auto", backend="gpu", dtype=bf16, seq_len=2048, d_head=128) == "cudnn"
    assert resolve_impl("auto", backend="gpu", dtype=f32, seq_len=2048, d_head=128) == "blockwise"
    assert resolve_impl("auto", backend="tpu", dtype=bf16, seq_len=2048, d_head=128) == "splash"
    with pytest.raises(UserError, match="cudnn needs an NVIDIA GPU"):
        resolve_impl("cudnn", backend="cpu", dtype=bf16, seq_len=64, d_head=64)
    with pytest.raises(UserError, match="bfloat16/float16"):
        resolve_impl("cudnn", backend="gpu", dtype=f32, seq_len=64, d_head=64)
    with pytest.raises(UserError, match="splash needs a TPU"):
        resolve_impl("splash", backend="gpu", dtype=bf16, seq_len=64, d_head=64)


def test_cli_impl_that_cannot_run_is_one_line(capsys) -> None:
    from gpt3_jax.cli import main

    assert main(["plan", "configs/tiny.yaml", "--devices", "8", "model.attention_impl=splash"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.attention_impl=splash needs a TPU") and err.count("\n") == 1


def _softmax_then_values(q, k, v, mask):
    """The textbook form: probabilities, then their product with v (padding rows zeroed)."""
    logits = jnp.einsum("...th,...sh->...ts", q, k) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("...ts,...sh->...th", jnp.where(mask, probs, 0.0), v)


def test_attend_equals_the_textbook_softmax_with_padding_rows() -> None:
    """``attend`` (hidden logits -inf, the division after the product with v) is the plain
    softmax-then-values, forward and gradients, and a query that sees no key gets zeros and
    finite gradients."""
    from gpt3_jax.model.attention import attend

    q, k, v = _qkv(24, seed=3)
    mask = jax.random.bernoulli(jax.random.key(5), 0.6, (2, 3, 24, 24)) | jnp.eye(24, dtype=bool)
    mask = mask.at[:, :, 7].set(False)  # query 7 sees nothing (a padding query of the KV cache)
    np.testing.assert_allclose(attend(q, k, v, mask), _softmax_then_values(q, k, v, mask), atol=2e-6)
    assert not np.asarray(attend(q, k, v, mask))[:, :, 7].any()
    cot = jax.random.normal(jax.random.key(9), q.shape)
    grads = [
        jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask) * cot), argnums=(0, 1, 2))(q, k, v)
        for f in (attend, _softmax_then_values)
    ]
    for a, b in zip(*grads, strict=True):
        assert np.isfinite(np.asarray(a)).all()
        np.testing.assert_allclose(a, b, atol=1e-5)
