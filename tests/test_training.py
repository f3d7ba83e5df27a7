"""The trainer end to end on a tiny model and 8 simulated devices (fsdp=8): determinism, the
metrics it writes, its checks, NaN handling and fine-tuning from converted GPT-2 weights.

Every run uses the same small text (Python's own json/textwrap sources, so every machine with this
Python has it) and a character tokenizer trained once per module. A persistent compilation cache
in a temporary folder lets the runs after the first skip XLA compilation (same program, same
numbers: it only saves time).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest

from gpt3_jax.config import Config, load_config
from gpt3_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TEXT_FILES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "bisect.py", "heapq.py")
TINY = (  # a 2-layer, d 32 model: seconds per run on CPU
    "model.n_layer=2",
    "model.d_model=32",
    "model.n_head=2",
    "model.n_ctx=32",
    "model.vocab_size=128",
    "model.local_window=8",
    "model.dtype=float32",
    "train.batch_size=8",
    "train.log_every=1",
    "train.eval_batches=2",
    "train.sample_tokens=0",  # no sample at the end: it would compile the decoder every run
    "data.val_fraction=0.1",
)


@dataclass(frozen=True)
class TextData:
    text: Path
    tokenizer: Path
    cache: Path


def make_text_data(root: Path) -> TextData:
    from gpt3_jax.data import train_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = root / "text.txt"
    text.write_text("".join((stdlib / f).read_text() for f in TEXT_FILES))
    tok = train_tokenizer([text], 128, root / "tokenizer", "char", progress=False)
    return TextData(text, tok.path, root / "cache")


def tiny_config(workdir: Path, data: TextData, *overrides: str) -> Config:
    """configs/tiny.yaml shrunk further, on ``data``; later overrides win."""
    base = (
        f"run.workdir={workdir}",
        f"data.input=[{data.text}]",
        f"data.tokenizer={data.tokenizer}",
        f"data.cache_dir={data.cache}",
    )
    return load_config(ROOT / "configs" / "tiny.yaml", [*base, *TINY, *overrides])


def cli_args(workdir: Path, data: TextData, *overrides: str) -> list[str]:
    """The same config as ``gpt3-jax train`` arguments."""
    base = (
        f"run.workdir={workdir}",
        f"data.input=[{data.text}]",
        f"data.tokenizer={data.tokenizer}",
        f"data.cache_dir={data.cache}",
    )
    return ["train", str(ROOT / "configs" / "tiny.yaml"), *base, *TINY, *overrides]


def losses(workdir: Path) -> dict[int, float]:
    """step → training loss from metrics.jsonl (the last record of a step wins)."""
    from gpt3_jax.training.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextData:
    return make_text_data(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory: pytest.TempPathFactory):
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {k: getattr(jax.config, k) for k in keys}
    # one folder per pytest session, shared by the training test modules
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.getbasetemp() / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield
    for k, v in old.items():
        jax.config.update(k, v)


@pytest.fixture(scope="module")
def run_a(data: TextData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 6-step run with an eval and checkpoints: the reference for several tests."""
    from gpt3_jax.training.loop import train

    workdir = tmp_path_factory.mktemp("run_a")
    cfg = tiny_config(workdir, data, "train.steps=6", "train.eval_every=3", "checkpoint.every=3")
    return workdir, train(cfg, progress=False)


def test_micro_batch_must_split_over_data_parallelism(data: TextData, tmp_path: Path) -> None:
    from gpt3_jax.training.loop import train

    # 8 devices → fsdp=8; a micro-batch of 12 / 3 = 4 sequences cannot split 8 ways
    cfg = tiny_config(tmp_path, data, "train.batch_size=12", "train.micro_batches=3")
    with pytest.raises(
        UserError, match=r"batch_size=12 in 3 micro-batch\(es\) gives 4 sequences .* multiple of 8"
    ):
        train(cfg, progress=False)


def test_same_seed_gives_bitwise_identical_losses(run_a, data: TextData, tmp_path: Path, capsys) -> None:
    from gpt3_jax.training.loop import train

    train(tiny_config(tmp_path, data, "train.steps=6"), progress=False)
    assert losses(tmp_path) == losses(run_a[0])  # exact float equality, every step
    # a CPU has no known peak FLOP/s: said once, and no MFU in the records (rather than nulls)
    said = "MFU is not reported: no peak FLOP/s known for device kind 'cpu'"
    assert capsys.readouterr().out.count(said) == 1


def test_metrics_checkpoints_and_summary(run_a) -> None:
    from gpt3_jax.training.metrics import read_metrics
    from gpt3_jax.training.optim import learning_rate

    workdir, summary = run_a
    records = read_metrics(workdir)
    train_recs = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [3, 6]
    for r in train_recs[1:]:  # the first step is compilation, timed apart
        for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "step_time_s", "tokens"):
            assert key in r, key
        assert "mfu" not in r  # CPU: no known peak
        assert r["tokens_per_sec"] > 0 and r["step_time_s"] > 0
    assert "compile_s" in train_recs[0]
    cfg = tiny_config(workdir, TextData(Path("x"), Path("x"), Path("x")))
    for r in train_recs:  # the schedule is in tokens: 8 sequences × 32 tokens per step
        assert r["tokens"] == 256 * r["step"]
        assert r["lr"] == pytest.approx(float(learning_rate(cfg.optim, r["tokens"])), rel=1e-6)
    ref = _reference_eval_loss(workdir, load_config(workdir / "config.yaml"))  # step 6: final params
    assert evals[-1]["eval_loss"] == pytest.approx(ref, rel=1e-5)
    assert evals[-1]["eval_perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
    ckpts = workdir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["3", "6"]
    assert (ckpts / "tokenizer.model").is_file()
    assert summary["steps"] == 6 and summary["stopped_by"] is None
    assert summary["eval_loss"] == evals[-1]["eval_loss"]


def _reference_eval_loss(workdir: Path, cfg: Config) -> float:
    """The eval loss recomputed by hand: the first ``eval_batches`` × batch windows of the
    validation split, in order, scored with a float64 log-softmax of the checkpoint's logits."""
    from gpt3_jax import checkpoint
    from gpt3_jax.data import PreparedData

    _, model = checkpoint.load_model(workdir / "checkpoints")
    (prepared,) = [PreparedData.load(p) for p in (Path(cfg.data.cache_dir)).glob("tokens-*")]
    val = prepared.val_stream()
    t, n = cfg.model.n_ctx, cfg.train.eval_batches * cfg.train.batch_size
    windows = np.stack([val.read(i * t, i * t + t + 1) for i in range(n)]).astype(np.int32)
    logits = np.asarray(model(windows[:, :-1])[0], np.float64)[..., : cfg.model.vocab_size]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, windows[:, 1:, None], -1).mean())


def test_checkpoint_loads_as_a_model(run_a) -> None:
    """A training checkpoint is the shared layout: ``checkpoint.load_model`` reads it."""
    from gpt3_jax import checkpoint

    cfg, model = checkpoint.load_model(run_a[0])
    assert cfg.model.n_layer == 2
    logits, _ = model(np.zeros((1, 4), np.int32))
    assert logits.shape[:2] == (1, 4) and bool(np.isfinite(np.asarray(logits)).all())
    assert checkpoint.tokenizer_path(run_a[0]) is not None


def test_nan_stops_and_keeps_the_good_checkpoint(run_a, data: TextData, tmp_path: Path, capsys) -> None:
    """Continue run A's step-3 checkpoint with an absurd learning rate: the run stops with exit
    code 3 and a clear message, and nothing non-finite is ever saved."""
    import shutil

    from gpt3_jax import checkpoint
    from gpt3_jax.cli import main

    shutil.copytree(run_a[0] / "checkpoints", tmp_path / "checkpoints", ignore=shutil.ignore_patterns("6"))
    args = cli_args(tmp_path, data, "train.steps=12", "checkpoint.every=1", "optim.lr=1e30", "--no-progress")
    assert main(args) == 3
    err = capsys.readouterr().err
    assert "training diverged" in err and "last good checkpoint" in err
    root, step = checkpoint.resolve(tmp_path)
    assert step < 12
    _, model = checkpoint.load_model(tmp_path)
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model))
    assert all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)


def test_init_from_wrong_shape_is_one_line_error(data: TextData, tmp_path: Path) -> None:
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.model import GPT
    from gpt3_jax.training.loop import train

    small = tiny_config(tmp_path / "src", data, "model.d_model=16")
    save_params(tmp_path / "params", small, nnx.state(GPT(small.model, rngs=nnx.Rngs(0)), nnx.Param))
    cfg = tiny_config(tmp_path / "run", data, f"train.init_from={tmp_path / 'params'}")
    with pytest.raises(UserError, match=r"init_from=.*has shape .* d_model=16"):
        train(cfg, progress=False)


@pytest.mark.slow
@pytest.mark.compare
def test_fine_tune_converted_gpt2_lowers_the_loss(data: TextData, tmp_path: Path) -> None:
    """A random GPT-2 (transformers) → ``convert.from_hf`` → params-only checkpoint →
    ``train.init_from``: the run starts from exactly those weights and lowers the loss."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from flax import nnx
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt3_jax import convert
    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.data import prepare_training_data, train_iterator
    from gpt3_jax.training.loop import train
    from gpt3_jax.training.step import cross_entropy

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=128, n_positions=32))
    hf.save_pretrained(tmp_path / "gpt2")
    src_cfg, model = convert.from_hf(tmp_path / "gpt2")
    save_params(tmp_path / "params", src_cfg, nnx.state(model, nnx.Param))

    m = src_cfg.model
    shape = [f"model.{k}={getattr(m, k)}" for k in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size")]
    cfg = tiny_config(
        tmp_path / "run",
        data,
        *shape,
        f"model.vocab_multiple={m.vocab_multiple}",
        "model.attention_pattern=[dense]",
        f"train.init_from={tmp_path / 'params'}",
        "train.steps=12",
        "train.eval_every=12",
        "optim.lr=3e-3",
        "optim.warmup_tokens=256",
    )
    summary = train(cfg, progress=False)

    # step 1's loss is the converted model's loss on the first batch: the weights were used
    prepared = prepare_training_data(cfg, cfg.run.workdir, progress=False)
    batch = next(train_iterator(prepared, batch_size=8, seq_len=32, seed=cfg.run.seed))
    expected = float(cross_entropy(model(batch["inputs"])[0], batch["targets"], m.vocab_size))
    got = losses(tmp_path / "run")
    assert got[1] == pytest.approx(expected, rel=1e-4)
    assert summary["eval_loss"] < got[1] - 0.5  # new text, clearly learned


@pytest.mark.slow
def test_two_30_step_cli_runs_are_bitwise_identical(data: TextData, tmp_path: Path) -> None:
    """The issue's check, through the command line in fresh processes."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for name in ("a", "b"):
        args = cli_args(tmp_path / name, data, "train.steps=30", "checkpoint.every=0", "--no-progress")
        subprocess.run([sys.executable, "-m", "gpt3_jax", *args], check=True, env=env, capture_output=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == list(range(1, 31)) and a == b
    assert json.dumps(a) == json.dumps(b)


def test_profile_steps_write_a_trace(data: TextData, tmp_path: Path) -> None:
    """``train.profile_steps=[2, 3]`` leaves a jax.profiler trace under the workdir, in the layout
    TensorBoard's profile plugin reads (plugins/profile/<run>/<host>.xplane.pb), with the steps in it,
    and the same trace for Perfetto beside it."""
    import gzip

    from gpt3_jax.training.loop import train

    train(tiny_config(tmp_path, data, "train.steps=4", "train.profile_steps=[2,3]"), progress=False)
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert b"train_step" in traces[0].read_bytes()  # the jitted step ran while tracing
    perfetto = json.loads(gzip.decompress((traces[0].parent / "perfetto_trace.json.gz").read_bytes()))
    assert any("train_step" in event.get("name", "") for event in perfetto["traceEvents"])
    with pytest.raises(UserError, match=r"train.profile_steps: got \[3, 2\]"):
        tiny_config(tmp_path, data, "train.profile_steps=[3,2]")


def test_init_compiled_for_a_fast_compile_gives_the_same_state(tmp_path: Path) -> None:
    """``init_state`` compiles the initialisation with LLVM's optimisations off on CPU: the state
    equals the one the default compile makes, to float32 rounding, with the same shardings."""
    from gpt3_jax.training.setup import setup
    from gpt3_jax.training.state import init_compiler_options, init_state, make_init

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"run.workdir={tmp_path}", *TINY])
    s = setup(cfg, jax.devices()[:1])
    assert init_compiler_options("cpu") == {"xla_backend_optimization_level": 1}
    assert init_compiler_options("gpu") == {} and init_compiler_options("tpu") == {}
    with jax.set_mesh(s.mesh):
        fast = init_state(cfg, s.tx, s.shardings)
        plain = jax.jit(make_init(cfg, s.tx), out_shardings=s.shardings)(None)
    assert jax.tree.structure(fast) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        assert a.sharding == b.sharding and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)
    assert max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(fast.params)) > 0
