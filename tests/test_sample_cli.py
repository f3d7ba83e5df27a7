"""``gpt3-jax sample`` and ``gpt3-jax eval`` end to end on a tiny checkpoint, their one-line
errors, and the sampling notebook's code cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax.cli import main

ROOT = Path(__file__).resolve().parents[1]
TEXT = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: Ay me!\n" * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny [dense, local] model with a character tokenizer stored beside it."""
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.data import train_tokenizer
    from gpt3_jax.model import GPT

    root = tmp_path_factory.mktemp("sample")
    tok = train_tokenizer(None, 100, root / "tok", "char", lines=TEXT.splitlines(), progress=False)
    cfg = ModelConfig(
        n_layer=2,
        d_model=32,
        n_head=4,
        n_ctx=192,
        vocab_size=64,
        local_window=4,
        dtype="float32",
        init_std=0.3,
    )
    model = GPT(cfg, rngs=nnx.Rngs(0))
    save_params(root / "ckpt", Config(model=cfg), nnx.state(model, nnx.Param), tokenizer=tok.path)
    small = ModelConfig(n_layer=2, d_model=32, n_head=4, n_ctx=48, vocab_size=8, dtype="float32")
    save_params(root / "small", Config(model=small), nnx.state(GPT(small, rngs=nnx.Rngs(0)), nnx.Param))
    (root / "data.txt").write_text(TEXT)
    return root


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sample_json(ckpt: Path, capsys) -> None:
    code, out, _ = run_cli(
        capsys, "sample", "--checkpoint", str(ckpt / "ckpt"), "--prompt", "ROMEO:", "--max-new-tokens", "12",
        "--temperature", "0.8", "--top-p", "0.9", "--num-samples", "2", "--seed", "3", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert set(result) >= {"samples", "prompt_tokens", "new_tokens", "tokens_per_sec", "compile_seconds"}
    assert result["prompt_tokens"] == 6 and len(result["samples"]) == 2
    for s in result["samples"]:
        assert 0 < len(s["ids"]) <= 12 and isinstance(s["text"], str)
    assert result["new_tokens"] == sum(len(s["ids"]) for s in result["samples"])
    again = json.loads(run_cli(capsys, *_argv(ckpt, "--temperature", "0.8", "--top-p", "0.9"))[1])
    assert again["samples"][0]["ids"] == result["samples"][0]["ids"]  # same seed, same sample


def _argv(ckpt: Path, *extra: str) -> list[str]:
    return [
        "sample", "--checkpoint", str(ckpt / "ckpt"), "--prompt", "ROMEO:", "--max-new-tokens", "12",
        "--num-samples", "2", "--seed", "3", "--json", *extra,
    ]  # fmt: skip


def test_sample_streams_text_and_ids_prompt(ckpt: Path, capsys) -> None:
    argv = ["sample", "--checkpoint", str(ckpt / "ckpt"), "--prompt-ids", "5,6,7", "--max-new-tokens", "8"]
    code, out, err = run_cli(capsys, *argv, "--temperature", "0")
    assert code == 0 and "tokens/s" in err
    code, js, _ = run_cli(capsys, *argv, "--temperature", "0", "--json")
    assert out.rstrip("\n") == json.loads(js)["samples"][0]["text"]  # streamed = the same greedy text


def test_sample_stop_string(ckpt: Path, capsys) -> None:
    base = ["sample", "--checkpoint", str(ckpt / "ckpt"), "--prompt", "JULIET:", "--seed", "0"]
    full = json.loads(run_cli(capsys, *base, "--max-new-tokens", "20", "--json")[1])["samples"][0]
    assert len(full["text"]) >= 12
    stop = full["text"][10:12]
    cut = json.loads(run_cli(capsys, *base, "--max-new-tokens", "20", "--json", "--stop", stop)[1])[
        "samples"
    ][0]
    assert cut["text"] == full["text"][: full["text"].index(stop)]
    assert cut["ids"] == full["ids"][: len(cut["ids"])]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt-ids", ",".join(["3"] * 192)], "context"),
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--top-p", "0"], "top-p"),
        (["--prompt", "hi", "--top-p", "1.5"], "top-p"),
        (["--prompt", "hi", "--top-k", "-2"], "top-k"),
        (["--prompt-ids", "1,x"], "prompt-ids"),
    ],
)
def test_sample_errors(ckpt: Path, capsys, args: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(ckpt / "ckpt"), *args)
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_sample_missing_checkpoint_and_vocab_mismatch(ckpt: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "sample", "--checkpoint", str(ckpt / "nope"), "--prompt", "hi")
    assert code == 2 and "not found" in err and err.count("\n") == 1
    tok = str(ckpt / "tok" / "tokenizer.model")
    code, _, err = run_cli(
        capsys, "sample", "--checkpoint", str(ckpt / "small"), "--prompt", "hi", "--tokenizer", tok
    )
    assert code == 2 and "vocab_size" in err and err.count("\n") == 1


def test_eval_json(ckpt: Path, capsys) -> None:
    code, out, _ = run_cli(
        capsys, "eval", "--checkpoint", str(ckpt / "ckpt"), "--input", str(ckpt / "data.txt"),
        "--batch-size", "4", "--max-batches", "2", "--seq-len", "48", "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert result["tokens"] == 2 * 4 * 48  # two full batches of 48-token windows
    ref = _reference_loss(ckpt, windows=8, length=48)
    assert result["loss"] == pytest.approx(ref, rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(ref), rel=1e-5)


def _reference_loss(ckpt: Path, windows: int, length: int) -> float:
    """By hand: the text's ids after an end-of-text, cut into windows of ``length`` next-token
    pairs, scored with a float64 log-softmax over the model's ids (its vocabulary is larger than
    the tokenizer's here; training's loss normalises over it too)."""
    from gpt3_jax.checkpoint import load_model, tokenizer_path
    from gpt3_jax.data import load_tokenizer

    tok = load_tokenizer(tokenizer_path(ckpt / "ckpt"))
    cfg, model = load_model(ckpt / "ckpt")
    assert cfg.model.vocab_size > tok.vocab_size
    ids = np.array([tok.eot_id, *tok.encode(TEXT)])
    rows = np.stack([ids[i * length : i * length + length + 1] for i in range(windows)])
    logits = np.asarray(model(rows[:, :-1])[0], np.float64)[..., : cfg.model.vocab_size]
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, rows[:, 1:, None], -1).mean())


@pytest.mark.slow
def test_sampling_notebook_cells_run(ckpt: Path, capsys, monkeypatch) -> None:
    """The code of notebooks/sample_from_checkpoint.ipynb, every cell in order, in this process
    against the tiny checkpoint (its parameters cell replaced; the test's 8 simulated devices serve
    its mesh); figures drawn but not written. tests/test_notebooks.py runs it in a Jupyter kernel."""
    pytest.importorskip("matplotlib", reason="the notebooks extra")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # the notebook sets it: restore it after
    nb = json.loads((ROOT / "notebooks" / "sample_from_checkpoint.ipynb").read_text())
    scope: dict = {}
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        if "parameters" in cell["metadata"].get("tags", []):
            source = f"CHECKPOINT = {str(ckpt / 'ckpt')!r}\nFIGURES = ''"
        exec(compile(source, f"sample_from_checkpoint.ipynb code cell {i}", "exec"), scope)
    plt.close("all")
    out = capsys.readouterr().out
    assert "perplexity" in out and "the same text as on one device: True" in out
    assert scope["sharded"].model.embed.wte[...].sharding.mesh.size == 8
