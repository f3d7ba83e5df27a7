"""The decoder's equivalences: scan vs unrolled, remat vs none, banded attention vs a naive
reference, and what a locally banded layer can and cannot see."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt3_jax.model import GPT, Attention, attend, causal_mask


def _build(cfg, seed=0):
    return GPT(cfg, rngs=nnx.Rngs(seed))


def _with(model, **changes):
    """The same parameters under another model config (dtype/remat/scan do not change shapes)."""
    graphdef, state = nnx.split(model)
    clone = _build(dataclasses.replace(model.cfg, **changes))
    nnx.update(clone, state)
    return clone


def _tokens(cfg, batch=2, length=None, seed=1):
    length = length or cfg.n_ctx
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


def test_logits_shape_and_padded_vocab(tiny_model_config):
    model = _build(tiny_model_config)
    logits = model(_tokens(tiny_model_config, length=10))
    assert logits.shape == (2, 10, 384)  # 300 padded up to a multiple of 128
    assert logits.dtype == jnp.float32


def test_scan_and_unrolled_forward_agree(tiny_model_config):
    scanned = _build(tiny_model_config)
    unrolled = _with(scanned, scan_layers=False)
    tokens = _tokens(tiny_model_config)
    np.testing.assert_allclose(scanned(tokens), unrolled(tokens), atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["full", "save_dots"])
def test_remat_gradients_equal_plain(tiny_model_config, policy):
    plain = _build(tiny_model_config)
    remat = _with(plain, remat=policy)
    tokens = _tokens(tiny_model_config)

    def loss(model):
        return model(tokens).mean()

    g_plain = nnx.grad(loss)(plain)
    g_remat = nnx.grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def _naive_banded_attention(x, attn, window):
    """Per query, a plain loop over the keys it may see: the reference for the masked version."""
    q, k, v = (np.asarray(a) for a in attn.qkv(x))
    b, t, n, h = q.shape
    out = np.zeros_like(q)
    for i in range(t):
        lo = 0 if window is None else max(0, i - window + 1)
        logits = np.einsum("bnh,bsnh->bns", q[:, i], k[:, lo : i + 1]) / np.sqrt(h)
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[:, i] = np.einsum("bns,bsnh->bnh", probs, v[:, lo : i + 1])
    return np.asarray(attn.out(jnp.asarray(out)))


@pytest.mark.parametrize("kind", ["dense", "local"])
def test_attention_equals_naive_reference(tiny_model_config, kind):
    attn = Attention(tiny_model_config, kind, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(0), (2, 20, tiny_model_config.d_model))
    positions = jnp.broadcast_to(jnp.arange(20), (2, 20))
    window = tiny_model_config.local_window if kind == "local" else None
    np.testing.assert_allclose(attn(x, positions), _naive_banded_attention(x, attn, window), atol=1e-5)


def test_mask_sees_exactly_the_window():
    pos = jnp.arange(10)
    mask = np.asarray(causal_mask(pos, pos, 3))
    for q in range(10):
        assert [k for k in range(10) if mask[q, k]] == list(range(max(0, q - 2), q + 1))
    dense = np.asarray(causal_mask(pos, pos, None))
    assert (dense == np.tril(np.ones((10, 10), bool))).all()


def test_local_layer_ignores_tokens_outside_its_window(tiny_model_config):
    """Perturb the input just outside a query's window: a local layer's output there must not move,
    while one position later (inside the window) it must."""
    w = tiny_model_config.local_window
    attn = Attention(tiny_model_config, "local", rngs=nnx.Rngs(4))
    t = 3 * w
    x = jax.random.normal(jax.random.key(1), (1, t, tiny_model_config.d_model))
    positions = jnp.arange(t)[None]
    j = 5  # the perturbed position
    x2 = x.at[0, j].add(1.0)
    y1, y2 = attn(x, positions), attn(x2, positions)
    moved = np.abs(np.asarray(y1 - y2)).max(-1)[0]
    assert moved[:j].max() == 0.0  # the past does not see the future
    assert moved[j + w :].max() == 0.0  # j is outside the window of every query from j + w on
    assert moved[j : j + w].min() > 0.0  # inside the window it does matter


def test_dense_and_alternating_differ_only_where_the_window_cuts(tiny_model_config):
    """With the same parameters, [dense, local] equals all-dense while the sequence fits in the
    window, and differs once it does not."""
    alternating = _build(tiny_model_config)
    dense = _with(alternating, attention_pattern=("dense", "dense"))
    w = tiny_model_config.local_window
    tokens = _tokens(tiny_model_config, length=3 * w)
    a, d = np.asarray(alternating(tokens)), np.asarray(dense(tokens))
    np.testing.assert_allclose(a[:, :w], d[:, :w], atol=1e-5)  # every query's past fits the window
    assert np.abs(a[:, w:] - d[:, w:]).max(-1).min() > 1e-4  # past the window every position differs


def test_causality_of_the_whole_model(tiny_model_config):
    model = _build(tiny_model_config)
    tokens = _tokens(tiny_model_config, length=16)
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % tiny_model_config.vocab_size)
    a, b = np.asarray(model(tokens)), np.asarray(model(changed))
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 0


def test_initialisation_follows_gpt2(tiny_model_config):
    model = _build(tiny_model_config.__class__(**{**dataclasses.asdict(tiny_model_config), "d_model": 256}))
    std = 0.02 / np.sqrt(2 * model.cfg.n_layer)
    proj = np.asarray(model.groups.blocks[0].mlp.c_proj_w[...])
    fc = np.asarray(model.groups.blocks[0].mlp.c_fc_w[...])
    assert abs(proj.std() - std) / std < 0.05
    assert abs(fc.std() - 0.02) / 0.02 < 0.05
    assert np.all(np.asarray(model.groups.blocks[0].attn.c_attn_b[...]) == 0)


def test_dropout_is_off_by_default_and_on_with_a_key(tiny_model_config):
    tokens = _tokens(tiny_model_config, length=8)
    model = _build(tiny_model_config)
    np.testing.assert_array_equal(model(tokens), model(tokens, dropout_key=jax.random.key(0)))
    noisy = _with(model, dropout=0.5)
    assert np.abs(np.asarray(noisy(tokens, dropout_key=jax.random.key(0)) - model(tokens))).max() > 0
    np.testing.assert_allclose(noisy(tokens), model(tokens), atol=1e-6)


def test_attend_matches_softmax_of_masked_scores():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 5, 2, 4)) for i in range(3))
    mask = causal_mask(jnp.arange(5), jnp.arange(5), None)[None, None]
    scores = jnp.einsum("btnh,bsnh->bnts", q, k) / 2.0
    probs = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), -1)
    np.testing.assert_allclose(attend(q, k, v, mask), jnp.einsum("bnts,bsnh->btnh", probs, v), atol=1e-6)


def test_abstract_model_builds_inside_and_outside_a_mesh(tiny_model_config):
    """Shapes and logical names come out the same whether or not a mesh is set (Flax shards
    annotated variables eagerly when one is)."""
    from gpt3_jax import sharding
    from gpt3_jax.model import abstract_gpt

    _, outside = abstract_gpt(tiny_model_config)
    mesh = jax.make_mesh((1, 4, 2), sharding.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh):
        _, inside = abstract_gpt(tiny_model_config)

    def described(state):
        is_var = lambda x: isinstance(x, nnx.Variable)
        return jax.tree.map(lambda v: (v.shape, sharding.logical_names(v)), state, is_leaf=is_var)

    assert described(outside) == described(inside)
