"""The decoder's equivalences: scanned vs per-layer stack (forward and gradients), remat vs none,
attention vs a naive per-query loop, cached prefill and decode vs the full forward pass, and what a
locally banded layer can and cannot see."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gpt3_jax.model import GPT, Attention, causal_mask, stack_layers, unstack_layers


def _build(cfg, seed=0):
    return GPT(cfg, rngs=nnx.Rngs(seed))


def _with(model, **changes):
    """The same parameters under another model config (dtype/remat/scan do not change values)."""
    cfg = dataclasses.replace(model.cfg, **changes)
    clone = _build(cfg)
    pure = nnx.state(model, nnx.Param).to_pure_dict()
    if model.cfg.scan_layers != cfg.scan_layers:
        pure = unstack_layers(pure, cfg) if model.cfg.scan_layers else stack_layers(pure, cfg)
    state = nnx.state(clone, nnx.Param)
    state.replace_by_pure_dict(pure)
    nnx.update(clone, state)
    return clone


def _tokens(cfg, batch=2, length=None, seed=1):
    length = length or cfg.n_ctx
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, cfg.vocab_size)


def _logits(model, tokens, **kw):
    return np.asarray(model(tokens, **kw)[0])


def test_logits_shape_and_padded_vocab(tiny_model_config):
    model = _build(tiny_model_config)
    logits, cache = model(_tokens(tiny_model_config, length=10))
    assert logits.shape == (2, 10, 384)  # 300 padded up to a multiple of 128
    assert logits.dtype == jnp.float32 and cache is None


def test_one_seed_gives_the_same_parameters_in_both_layouts(tiny_model_config):
    scanned = _build(tiny_model_config)
    per_layer = _build(dataclasses.replace(tiny_model_config, scan_layers=False))
    a = nnx.state(scanned, nnx.Param).to_pure_dict()
    b = stack_layers(nnx.state(per_layer, nnx.Param).to_pure_dict(), tiny_model_config)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert len(per_layer.groups) == tiny_model_config.n_groups


def test_scanned_and_per_layer_forward_and_gradients_agree(tiny_model_config):
    scanned = _build(tiny_model_config)
    per_layer = _with(scanned, scan_layers=False)
    tokens = _tokens(tiny_model_config)
    np.testing.assert_allclose(_logits(scanned, tokens), _logits(per_layer, tokens), atol=1e-5, rtol=0)

    def loss(model):
        return jnp.mean(model(tokens)[0] ** 2)

    g_scan = nnx.grad(loss)(scanned)
    g_layers = nnx.grad(loss)(per_layer)
    a = nnx.state(g_scan, nnx.Param).to_pure_dict()
    b = stack_layers(nnx.state(g_layers, nnx.Param).to_pure_dict(), tiny_model_config)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-4), a, b)


@pytest.mark.parametrize("scan", [True, False])
def test_a_per_layer_models_checkpoint_loads_into_either_layout(tiny_model_config, tmp_path, scan):
    """The save converts a per-layer model to the stored (stacked) layout in one jitted program;
    loading gives back every parameter exactly, scanned or per layer."""
    from gpt3_jax.checkpoint import load_model, save_params
    from gpt3_jax.config import Config

    per_layer = _build(dataclasses.replace(tiny_model_config, scan_layers=False))
    save_params(tmp_path / "ckpt", Config(model=per_layer.cfg), nnx.state(per_layer, nnx.Param))
    _, loaded = load_model(tmp_path / "ckpt", model_overrides={"scan_layers": scan})
    want = nnx.state(per_layer if not scan else _with(per_layer, scan_layers=True), nnx.Param)
    got = nnx.state(loaded, nnx.Param).to_pure_dict()
    jax.tree.map(np.testing.assert_array_equal, got, want.to_pure_dict())


@pytest.mark.parametrize("policy", ["full", "save_dots"])
@pytest.mark.parametrize("scan", [True, False])
def test_remat_gradients_equal_plain(tiny_model_config, policy, scan):
    plain = _build(dataclasses.replace(tiny_model_config, scan_layers=scan))
    remat = _with(plain, remat=policy)
    tokens = _tokens(tiny_model_config)

    def loss(model):
        return model(tokens)[0].mean()

    g_plain = nnx.grad(loss)(plain)
    g_remat = nnx.grad(loss)(remat)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)


def _naive_attention(q, k, v, window):
    """Per query, a plain loop over the keys it may see, in float64: the reference."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))  # (b, n, t, h)
    out = np.zeros_like(q)
    for i in range(q.shape[2]):
        lo = 0 if window is None else max(0, i - window + 1)
        logits = np.einsum("bnh,bnsh->bns", q[:, :, i], k[:, :, lo : i + 1]) / np.sqrt(q.shape[-1])
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[:, :, i] = np.einsum("bns,bnsh->bnh", probs, v[:, :, lo : i + 1])
    return out


@pytest.mark.parametrize("kind", ["dense", "local"])
def test_attention_equals_naive_reference(tiny_model_config, kind):
    attn = Attention(tiny_model_config, kind, rngs=nnx.Rngs(3))
    x = jax.random.normal(jax.random.key(0), (2, 20, tiny_model_config.d_model))
    positions = jnp.broadcast_to(jnp.arange(20), (2, 20))
    window = tiny_model_config.local_window if kind == "local" else None
    want = attn.out(jnp.asarray(_naive_attention(*attn.qkv(x), window), jnp.float32))
    got, _ = attn(x, positions)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_mask_sees_exactly_the_window():
    pos = jnp.arange(10)
    mask = np.asarray(causal_mask(pos, pos, 3))
    for q in range(10):
        assert [k for k in range(10) if mask[q, k]] == list(range(max(0, q - 2), q + 1))
    dense = np.asarray(causal_mask(pos, pos, None))
    assert (dense == np.tril(np.ones((10, 10), bool))).all()
    empty = np.asarray(causal_mask(pos, jnp.full((4,), -1), None))
    assert not empty.any()  # position -1: an empty cache slot or padding, never seen


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
    (y1, _), (y2, _) = attn(x, positions), attn(x2, positions)
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
    a, d = _logits(alternating, tokens), _logits(dense, tokens)
    np.testing.assert_allclose(a[:, :w], d[:, :w], atol=1e-5)  # every query's past fits the window
    assert np.abs(a[:, w:] - d[:, w:]).max(-1).min() > 1e-4  # past the window every position differs


def test_causality_of_the_whole_model(tiny_model_config):
    model = _build(tiny_model_config)
    tokens = _tokens(tiny_model_config, length=16)
    changed = tokens.at[:, 10].set((tokens[:, 10] + 1) % tiny_model_config.vocab_size)
    a, b = _logits(model, tokens), _logits(model, changed)
    np.testing.assert_array_equal(a[:, :10], b[:, :10])
    assert np.abs(a[:, 10:] - b[:, 10:]).max() > 0


def test_initialisation_follows_gpt2(tiny_model_config):
    model = _build(dataclasses.replace(tiny_model_config, d_model=256))
    std = 0.02 / np.sqrt(2 * model.cfg.n_layer)
    proj = np.asarray(model.groups.blocks[0].mlp.c_proj_w[...])
    fc = np.asarray(model.groups.blocks[0].mlp.c_fc_w[...])
    assert abs(proj.std() - std) / std < 0.05
    assert abs(fc.std() - 0.02) / 0.02 < 0.05
    assert np.all(np.asarray(model.groups.blocks[0].attn.c_attn_b[...]) == 0)


def test_dropout_is_off_by_default_and_on_with_a_key(tiny_model_config):
    tokens = _tokens(tiny_model_config, length=8)
    model = _build(tiny_model_config)
    np.testing.assert_array_equal(
        _logits(model, tokens), _logits(model, tokens, dropout_key=jax.random.key(0))
    )
    noisy = _with(model, dropout=0.5)
    assert np.abs(_logits(noisy, tokens, dropout_key=jax.random.key(0)) - _logits(model, tokens)).max() > 0
    np.testing.assert_allclose(_logits(noisy, tokens), _logits(model, tokens), atol=1e-6)


# --- the KV cache: prefill and decode are calls of the model ---------------------------------

PATTERNS = {"dense": ("dense",), "local": ("local",), "mixed": ("dense", "local")}


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "per-layer"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_cached_generation_equals_the_full_forward(tiny_model_config, pattern, scan):
    """Left-padded rows of different lengths, prompts longer than the window (8), then decode
    steps well past it: the prefill's logits and every step's equal the full forward pass of each
    unpadded row."""
    cfg = dataclasses.replace(tiny_model_config, attention_pattern=PATTERNS[pattern], scan_layers=scan)
    model = _build(cfg)
    text = np.asarray(_tokens(cfg, length=40))
    full = _logits(model, jnp.asarray(text))
    lens, p, steps = [13, 6], 16, 24
    tokens = np.zeros((2, p), np.int32)
    positions = np.full((2, p), -1, np.int32)
    for r, n in enumerate(lens):
        tokens[r, p - n :], positions[r, p - n :] = text[r, :n], np.arange(n)

    @jax.jit
    def call(model, tokens, positions, cache):
        return model(tokens, positions, cache=cache)

    logits, cache = call(model, tokens, positions, model.init_cache(2, p + steps))
    for r, n in enumerate(lens):
        np.testing.assert_allclose(np.asarray(logits)[r, p - n :], full[r, :n], atol=1e-5, rtol=1e-5)
    for i in range(steps):
        pos = np.array([[lens[r] + i] for r in range(2)], np.int32)
        token = np.array([[text[r, lens[r] + i]] for r in range(2)], np.int32)
        logits, cache = call(model, token, pos, cache)
        for r in range(2):
            np.testing.assert_allclose(np.asarray(logits)[r, 0], full[r, lens[r] + i], atol=1e-5, rtol=1e-5)


def test_local_cache_is_a_ring_of_the_window(tiny_model_config):
    model = _build(tiny_model_config)
    cache = model.init_cache(3, 50)
    dense, local = cache  # scanned: one stacked LayerCache per pattern entry
    assert dense.k.shape == (tiny_model_config.n_groups, 3 * 4, 50, 16)  # rows: batch × heads
    assert local.k.shape[-2] == tiny_model_config.local_window
    _, cache = model(_tokens(tiny_model_config, batch=3, length=20), cache=cache)
    assert np.asarray(cache[1].pos)[0, 0].tolist() == list(range(16, 20)) + list(range(12, 16))
    assert int(cache[0].end[0]) == 20


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


@pytest.mark.parametrize("size", [5, 8])
def test_mask_vocab_masks_only_the_padding(size: int) -> None:
    """Columns >= size take no probability mass; with nothing to mask (size = width, the
    shortcut that skips the select) the logits and the loss and its gradient are the select's."""
    import optax

    from gpt3_jax.model import mask_vocab

    logits = jax.random.normal(jax.random.key(0), (3, 8))
    targets = jnp.array([0, 2, 4])
    masked = mask_vocab(logits, size)
    np.testing.assert_array_equal(masked[:, :size], logits[:, :size])
    assert (np.asarray(jax.nn.softmax(masked)[:, size:]) == 0).all()

    def select(x: jax.Array) -> jax.Array:  # the plain form, always a select
        return jnp.where(jnp.arange(x.shape[-1]) < size, x, jnp.finfo(x.dtype).min)

    def loss_and_grad(form):
        def loss(x: jax.Array) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(form(x), targets).mean()

        return jax.value_and_grad(loss)(logits)

    ours, plain = loss_and_grad(lambda x: mask_vocab(x, size)), loss_and_grad(select)
    for a, b in zip(ours, plain, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "rows, plain, x_shape, w_shape",
    [
        ("md,df->mf", "btd,df->btf", (2, 5, 8), (8, 32)),
        ("md,dknh->mknh", "btd,dknh->btknh", (2, 5, 8), (8, 3, 2, 4)),
        ("mnh,nhd->md", "btnh,nhd->btd", (2, 5, 2, 4), (2, 4, 8)),
        ("md,vd->mv", "btd,vd->btv", (3, 4, 8), (16, 8)),
    ],
)
def test_project_is_the_einsum_over_batch_and_length(rows, plain, x_shape, w_shape) -> None:
    """``project`` (batch and length merged into rows) gives the einsum over [b, t]: the same
    result, shape and gradients for activation and weight."""
    from gpt3_jax.model.layers import project

    kx, kw, kc = jax.random.split(jax.random.key(1), 3)
    x, w = jax.random.normal(kx, x_shape), jax.random.normal(kw, w_shape)
    want = jnp.einsum(plain, x, w)
    got = project(rows, x, w)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    ct = jax.random.normal(kc, want.shape)  # a cotangent that weighs every output differently

    def grads(f):
        return jax.grad(lambda x, w: (f(x, w) * ct).sum(), argnums=(0, 1))(x, w)

    ours, ref = grads(lambda x, w: project(rows, x, w)), grads(lambda x, w: jnp.einsum(plain, x, w))
    for g, r in zip(ours, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_attention_out_is_the_einsum_over_heads(tiny_model_config) -> None:
    """``Attention.out`` (heads merged into one n·h axis for the product) is the einsum over
    [n, h] plus the bias: the same values, and gradients for the activation, weight and bias."""
    attn = Attention(tiny_model_config, "dense", rngs=nnx.Rngs(5))
    cfg = tiny_model_config
    y = jax.random.normal(jax.random.key(6), (2, cfg.n_head, 5, cfg.d_head))
    w = jax.random.normal(jax.random.key(7), attn.c_proj_w[...].shape)
    bias = jax.random.normal(jax.random.key(8), attn.c_proj_b[...].shape)
    ct = jax.random.normal(jax.random.key(9), (2, 5, cfg.d_model))

    graphdef, state = nnx.split(attn)

    def ours(y, w, bias):
        pure = state.to_pure_dict() | {"c_proj_w": w, "c_proj_b": bias}
        traced = jax.tree.map(lambda x: x, state)
        traced.replace_by_pure_dict(pure)
        return nnx.merge(graphdef, traced).out(y)

    def plain(y, w, bias):
        return jnp.einsum("bnth,nhd->btd", y, w) + bias

    np.testing.assert_allclose(ours(y, w, bias), plain(y, w, bias), rtol=1e-5, atol=1e-5)

    def grads(f):
        return jax.grad(lambda *a: (f(*a) * ct).sum(), argnums=(0, 1, 2))(y, w, bias)

    for g, r in zip(grads(ours), grads(plain), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_is_jax_tanh_gelu_in_value_and_derivatives(dtype) -> None:
    """The hand-differentiated ``gelu`` gives ``jax.nn.gelu(approximate=True)`` in float32: values,
    reverse-mode gradients (and value_and_grad's primal) and forward-mode tangents, over a range
    where the tanh saturates on both sides; in bfloat16 the same to bfloat16's rounding."""
    from gpt3_jax.model.layers import gelu

    x = (jax.random.normal(jax.random.key(3), (4, 257)) * 4).astype(dtype)
    ct = jax.random.normal(jax.random.key(4), x.shape).astype(dtype)

    def ref(z):  # the formula autodiff differentiates, in float32
        return jax.nn.gelu(z.astype(jnp.float32), approximate=True)

    def loss(f):
        return jax.value_and_grad(lambda z: (f(z).astype(jnp.float32) * ct.astype(jnp.float32)).sum())(x)

    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    assert gelu(x).dtype == dtype
    np.testing.assert_allclose(np.float32(gelu(x)), ref(x), **tol)
    (y, g), (y_ref, g_ref) = loss(gelu), loss(ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5 if dtype == jnp.float32 else 1e-2)
    np.testing.assert_allclose(np.float32(g), np.float32(g_ref), **tol)
    tangent, tangent_ref = (jax.jvp(f, (x,), (ct,))[1] for f in (gelu, ref))
    np.testing.assert_allclose(np.float32(tangent), np.float32(tangent_ref), **tol)


def test_gelu_keeps_less_for_the_backward_than_autodiff_of_its_formula() -> None:
    """The reason ``gelu`` is differentiated by hand: in a scanned MLP stack its reverse mode
    stacks one slope per layer where autodiff of the formula stacks several intermediates, so the
    compiled gradient needs less working memory (XLA's own count, nothing run)."""
    from gpt3_jax.model.layers import gelu

    n, m, d = 3, 64, 32
    keys = jax.random.split(jax.random.key(5), 3)
    x = jax.random.normal(keys[0], (m, d))
    w1, w2 = jax.random.normal(keys[1], (n, d, 4 * d)), jax.random.normal(keys[2], (n, 4 * d, d))

    def temp_bytes(act) -> int:
        def loss(x, w1, w2):
            return jax.lax.scan(lambda x, w: (x + act(x @ w[0]) @ w[1], None), x, (w1, w2))[0].sum()

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        return grad.lower(x, w1, w2).compile().memory_analysis().temp_size_in_bytes

    ours, autodiff = temp_bytes(gelu), temp_bytes(lambda z: jax.nn.gelu(z, approximate=True))
    per_layer = m * 4 * d * 4  # one float32 array of the MLP's width
    assert autodiff - ours >= 2 * n * per_layer, (ours, autodiff)
