"""KV-cache sampler: cached decode equals the full forward pass, sampling methods, batching,
sharding, scoring, and greedy equality with transformers on converted GPT-2 weights."""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gpt3_jax.config import Config, ModelConfig
from gpt3_jax.model import GPT
from gpt3_jax.sampling import Greedy, LanguageModel, Sample, Sampler, few_shot_prompt
from gpt3_jax.sampling.methods import make_method, top_k_filter, top_p_filter

# init_std 0.3: a random model with peaked, varied predictions, so greedy paths are not constant.
CFG = ModelConfig(
    n_layer=4, d_model=32, n_head=4, n_ctx=64, vocab_size=100, vocab_multiple=64, local_window=4,
    attention_pattern=("dense", "local"), dtype="float32", init_std=0.3,
)  # fmt: skip


@pytest.fixture(scope="module")
def model() -> GPT:
    return GPT(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def sampler(model: GPT) -> Sampler:
    return Sampler(model)


def reference_greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by re-running the full forward pass on the whole text at every step (the
    text right-padded to one shape: causal attention keeps padding out of earlier positions)."""
    seq = list(prompt)
    for _ in range(n):
        padded = jnp.asarray([seq + [0] * (CFG.n_ctx - len(seq))])
        seq.append(int(jnp.argmax(_forward(model, padded)[0, len(seq) - 1, : CFG.vocab_size])))
    return seq[len(prompt) :]


@nnx.jit
def _forward(model: GPT, tokens: jax.Array) -> jax.Array:
    return model(tokens)[0]


def test_greedy_batch_of_different_lengths_matches_reference(model: GPT, sampler: Sampler) -> None:
    prompts = [[5, 17, 3, 99, 42, 8, 1, 64, 23], [7, 7, 2]]
    result = sampler.generate(prompts, 12)
    assert result.ids == [reference_greedy(model, p, 12) for p in prompts]
    assert len(set(result.ids[0])) > 1  # a non-trivial path, or the test would prove little


def test_streaming_chunks_give_the_same_tokens(sampler: Sampler) -> None:
    prompts = [[5, 17, 3, 99, 42, 8, 1, 64, 23], [7, 7, 2]]
    seen: list[int] = []
    streamed = sampler.generate(prompts, 12, on_tokens=lambda t: seen.append(t.shape[1]))
    assert streamed.ids == sampler.generate(prompts, 12).ids
    assert seen == list(range(1, 13))  # one callback per token: the host sees each as it comes


def test_logprobs_are_the_models(model: GPT, sampler: Sampler) -> None:
    prompt = [4, 8, 15, 16, 23, 42]
    result = sampler.generate([prompt], 10)
    seq = prompt + result.ids[0]
    logp = jax.nn.log_softmax(
        _forward(model, jnp.asarray([seq + [0] * (CFG.n_ctx - len(seq))]))[0, :, : CFG.vocab_size], -1
    )
    want = [float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(result.ids[0])]
    np.testing.assert_allclose(result.logprobs[0], want, atol=1e-5)


def test_fixed_seed_same_samples_other_seed_differs(model: GPT) -> None:
    """Also: ids the tokenizer lacks (here ≥ 10) and padded-vocabulary ids are never drawn."""
    sampler, method = Sampler(model, vocab_size=10), Sample(temperature=2.0, top_k=50, top_p=0.95)
    a = sampler.generate([[1, 2, 3]] * 3, 16, method=method, seed=7).ids
    b = sampler.generate([[1, 2, 3]] * 3, 16, method=method, seed=7).ids
    c = sampler.generate([[1, 2, 3]] * 3, 16, method=method, seed=8).ids
    assert a == b
    assert a != c
    assert a[0] != a[1]  # rows of one batch draw independently
    assert max(max(r) for r in a + c) < 10


def test_top_k_1_equals_greedy(sampler: Sampler) -> None:
    prompts = [[9, 8, 7, 6, 5]]
    top1 = sampler.generate(prompts, 10, method=Sample(temperature=1.5, top_k=1), seed=3).ids
    assert top1 == sampler.generate(prompts, 10, method=Greedy()).ids
    assert make_method(temperature=0.0) == Greedy() == make_method(temperature=0.7, top_k=1)


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    probs = jnp.array([[0.05, 0.5, 0.15, 0.3]])
    logits = jnp.log(probs)
    kept = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]  # 0.5 alone reaches 0.4
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.3 = 0.8 >= 0.75
    assert kept(0.9) == [False, True, True, True]  # 0.95 >= 0.9
    assert kept(0.97) == [True, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    np.testing.assert_allclose(np.asarray(top_p_filter(logits, 0.75))[0, [1, 3]], np.log([0.5, 0.3]))


def test_top_k_filter() -> None:
    logits = jnp.array([[1.0, 4.0, 3.0, 2.0]])
    assert np.isfinite(np.asarray(top_k_filter(logits, 2)))[0].tolist() == [False, True, True, False]


def test_top_p_sampling_draws_only_from_the_nucleus() -> None:
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]] * 2000))
    draws = np.asarray(Sample(top_p=0.75)(logits, jax.random.key(0)))
    assert set(draws.tolist()) == {1, 3}
    assert abs(np.mean(draws == 1) - 0.5 / 0.8) < 0.05  # renormalised over the nucleus


def test_stops_at_end_of_text(model: GPT) -> None:
    prompt = [5, 17, 3, 99, 42, 8]
    free = Sampler(model).generate([prompt, [1, 2]], 12).ids
    eot = free[0][4]
    cut = free[0].index(eot)  # the first time row 0 produces that id
    stopped = Sampler(model, eot_id=eot).generate([prompt, [1, 2]], 12).ids
    assert stopped[0] == free[0][:cut]
    assert stopped[1] == (free[1][: free[1].index(eot)] if eot in free[1] else free[1])


def test_context_budget_clamps_new_tokens(sampler: Sampler) -> None:
    result = sampler.generate([list(range(60))], 30)
    assert len(result.ids[0]) == CFG.n_ctx - 60


def test_sharded_greedy_equals_single_device(tmp_path, model: GPT) -> None:
    from gpt3_jax.checkpoint import load_model, save_params
    from gpt3_jax.config import MeshConfig
    from gpt3_jax.sharding import make_mesh

    save_params(tmp_path / "ckpt", Config(model=CFG), nnx.state(model, nnx.Param))
    mesh = make_mesh(MeshConfig(data=2, fsdp=1, tensor=4), jax.devices()[:8])
    _, sharded = load_model(tmp_path / "ckpt", mesh=mesh)
    spec = sharded.groups.blocks[0].attn.c_attn_w[...].sharding.spec
    assert "tensor" in jax.tree.leaves(tuple(spec))  # heads really are split
    prompts = [[5, 17, 3, 99, 42, 8, 1], [7, 7, 2], [3, 1], [60, 61, 62, 63, 64]]
    got = Sampler(sharded, mesh=mesh).generate(prompts, 10).ids
    assert got == Sampler(model).generate(prompts, 10).ids


def test_score_matches_full_forward(model: GPT) -> None:
    lm = LanguageModel(Config(model=CFG), model)
    ids = np.random.default_rng(2).integers(0, CFG.vocab_size, 150).tolist()  # > n_ctx: 3 windows
    score = lm.score(ids, batch_size=2)
    logp = []
    for start in range(0, len(ids) - 1, CFG.n_ctx):
        chunk = ids[start : start + CFG.n_ctx + 1]
        inputs = chunk[:-1] + [0] * (CFG.n_ctx + 1 - len(chunk))
        lp = jax.nn.log_softmax(_forward(model, jnp.asarray([inputs]))[0, :, : CFG.vocab_size], -1)
        logp += [float(lp[i, t]) for i, t in enumerate(chunk[1:])]
    assert score.tokens == len(ids) - 1
    np.testing.assert_allclose(score.log_likelihood, sum(logp), rtol=1e-5)
    assert math.isclose(score.perplexity, math.exp(-sum(logp) / len(logp)), rel_tol=1e-5)


def test_few_shot_prompt() -> None:
    prompt = few_shot_prompt("Translate English to French.", [("cheese", "fromage"), ("cat", "chat")], "dog")
    assert prompt == (
        "Translate English to French.\n\nQ: cheese\nA: fromage\n\nQ: cat\nA: chat\n\nQ: dog\nA:"
    )
    zero_shot = few_shot_prompt("", [], "2+2=", input_prefix="", output_prefix="")
    assert zero_shot == "2+2=\n"


@pytest.mark.compare
def test_greedy_equals_transformers_generate(tmp_path) -> None:
    """Converted GPT-2 weights: our greedy tokens equal transformers' greedy generate."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt3_jax.convert import from_hf

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=500, n_positions=96)).eval()
    with torch.no_grad():  # spread the weights so greedy paths vary
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    cfg, model = from_hf(tmp_path / "hf")
    cfg = cfg.replace(model=dataclasses.replace(cfg.model, dtype="float32"))
    prompts = [[11, 22, 33, 44, 55, 66, 77], [400, 3, 9]]
    ours = Sampler(model).generate(prompts, 24).ids
    for prompt, got in zip(prompts, ours, strict=True):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = hf.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24,
                do_sample=False, pad_token_id=0,
            )  # fmt: skip
        assert got == out[0, len(prompt) :].tolist()
    assert len(set(ours[0])) > 3


LIVE_ARRAYS = """
import gc, sys
import jax
from flax import nnx
from gpt3_jax.sampling import load

lm = load(sys.argv[1])
lm.generate([3, 4, 5], 64)
gc.collect()
params = sum(a.nbytes for a in jax.tree.leaves(nnx.state(lm.model, nnx.Param)))
print(params, sum(a.nbytes for a in jax.live_arrays()))
"""


@pytest.mark.slow
def test_sampler_holds_no_copy_of_the_weights(tmp_path) -> None:
    """Loaded and generated from (in a fresh process: nothing else alive), the live device buffers
    are the parameters plus little more (the KV cache, the produced tokens): no second copy of the
    weights stays around."""
    import subprocess
    import sys

    from gpt3_jax.checkpoint import save_params

    cfg = dataclasses.replace(CFG, n_layer=6, d_model=128, n_head=4, n_ctx=128, vocab_size=1000)
    save_params(tmp_path / "ckpt", Config(model=cfg), nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    out = subprocess.run(
        [sys.executable, "-c", LIVE_ARRAYS, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        check=True,
    )
    params, live = map(int, out.stdout.split())
    assert params <= live <= 1.1 * params, (live, params)


@pytest.mark.slow
def test_custom_rules_reach_generation_on_a_2x2_mesh(tmp_path, model: GPT) -> None:
    """A model loaded with a custom rules table on a 2×2 mesh is sharded by it, its activations
    are constrained by it (seen in the compiled program), and it generates what one device does."""
    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import MeshConfig
    from gpt3_jax.sampling import decode, load
    from gpt3_jax.sharding import make_mesh

    save_params(tmp_path / "ckpt", Config(model=CFG), nnx.state(model, nnx.Param))
    mesh = make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    rules = (("embed", "tensor"), ("mlp", "fsdp"), ("heads", "fsdp"), ("act_batch", "tensor"))
    lm = load(tmp_path / "ckpt", mesh=mesh, rules=rules)
    assert lm.model.rules == rules and lm.model.embed.rules == rules
    assert not lm.cfg.model.scan_layers  # on CPU, load picks the per-layer layout
    assert lm.model.groups[0].blocks[0].mlp.c_fc_w[...].sharding.spec == P("tensor", "fsdp")
    prompts = [[5, 17, 3, 99, 42, 8, 1], [7, 7, 2]]
    got = lm.sampler.generate(prompts, 10).ids
    assert got == Sampler(model).generate(prompts, 10).ids
    # every activation constraint in the generation program follows the custom table: the batch
    # (2 rows) over `tensor`, where the default table would put it on data × fsdp
    tokens, positions, _ = lm.sampler.prepare(prompts, 10)
    with jax.set_mesh(mesh):
        hlo = decode.generate.lower(
            lm.sampler.graphdef, lm.sampler.params, tokens, positions, jax.random.key(0), 10,
            method=Greedy(), n=16, s_max=32, vocab=lm.sampler.vocab,
        ).as_text()  # fmt: skip
    constraints = re.findall(r"sharding_constraint %\S+ <@mesh, \[(.*?)\]> : tensor<(\d+)x", hlo)
    assert len(constraints) > 20
    for dims, lead in constraints:
        first = dims.split("}")[0] + "}"
        assert first == ('{"tensor"}' if lead == "2" else "{}"), (dims, lead)


def test_a_model_vocabulary_larger_than_the_tokenizer_samples_and_scores_over_the_models(
    gpt2_style_tokenizer,
) -> None:
    """As training's loss and transformers have it: greedy picks the argmax over the model's whole
    (unpadded) vocabulary, log-probabilities normalise over it, and ids the 512-token tokenizer
    lacks decode to no text."""
    from gpt3_jax.data.tokenizer import load_tokenizer

    cfg = dataclasses.replace(CFG, vocab_size=1000, init_std=0.5)
    model = GPT(cfg, rngs=nnx.Rngs(3))
    tok = load_tokenizer(gpt2_style_tokenizer)
    lm = LanguageModel(Config(model=cfg), model, tok)
    prompt = tok.encode("To be, or not")
    out = lm.generate(prompt, 12)
    ids = [*prompt, *out[0].ids]  # greedy: each new id is the argmax over the model's 1000 ids
    logits, _ = jax.jit(lambda m, x: m(x))(model, jnp.asarray([ids]))
    argmax = np.asarray(jnp.argmax(logits[0, :, : cfg.vocab_size], axis=-1))
    assert out[0].ids == argmax[len(prompt) - 1 : -1].tolist()
    assert any(i >= tok.vocab_size for i in out[0].ids), "the check needs ids past the tokenizer"
    assert out[0].text == tok.decode([i for i in out[0].ids if i < tok.vocab_size])

    scored = [tok.eot_id, *prompt]  # score() puts end-of-text before the text
    logits, _ = jax.jit(lambda m, x: m(x))(model, jnp.asarray([scored]))
    logits = np.asarray(logits[0, :-1, : cfg.vocab_size], np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    want = sum(logp[i, t] for i, t in enumerate(scored[1:]))
    assert lm.score(prompt).log_likelihood == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_the_decode_loop_reads_the_output_projection_as_it_lies(scan_layers) -> None:
    """The attention output projection c_proj_w [n, h, d] enters the compiled decode loop as stored:
    no [h, n, d] transposed copy of it is made (XLA:CPU made one per layer and step, inside the
    loop, when the product was written over [n, h] instead of the merged n·h)."""
    from gpt3_jax.sampling import decode

    n, h, layers = 2, 24, 6  # 3 repeats of the 2-layer pattern: n, h, n·h and 3 all differ
    cfg = dataclasses.replace(CFG, n_head=n, d_model=n * h, n_layer=layers, scan_layers=scan_layers)
    sampler = Sampler(GPT(cfg, rngs=nnx.Rngs(0)))
    tokens, positions, _ = sampler.prepare([[5, 17, 3]], 8)
    hlo = (
        decode.generate.lower(
            sampler.graphdef,
            sampler.params,
            tokens,
            positions,
            jax.random.key(0),
            8,
            method=Greedy(),
            n=8,
            s_max=16,
            vocab=sampler.vocab,
        )
        .compile()
        .as_text()
    )
    stack = rf"(?:{layers // 2},)?"  # scanned, stacked over the pattern's repeats
    assert re.search(rf"f32\[{stack}{n},{h},{n * h}\]", hlo)  # the weight is there, as stored
    assert not re.search(rf"f32\[(?:\d+,)*{h},{n},{n * h}\]", hlo)
