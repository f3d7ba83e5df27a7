"""GPT-2's own tokenizer end to end: ``convert from-hf`` carries a Hugging Face folder's byte-level
BPE into the checkpoint; ``sample``, ``eval`` and ``train.init_from`` then use its ids, and
``convert to-hf`` writes it back. Everything is built offline: random weights, a tokenizer trained
here with the ``tokenizers`` library (the ``gpt2_style_tokenizer`` fixture)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax.cli import main
from gpt3_jax.data import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "some text"
SHAPE = dict(n_layer=2, d_model=32, n_head=4, n_ctx=64, vocab_size=512)  # the tokenizer's 512 ids


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, gpt2_style_tokenizer: Path) -> Path:
    """A GPT-2 folder as save_pretrained writes it (config.json, model.safetensors, tokenizer.json),
    written without torch: a random all-dense model of ours through ``convert.to_hf``."""
    from flax import nnx

    from gpt3_jax import convert
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.model import GPT

    cfg = ModelConfig(**SHAPE, attention_pattern=("dense",), dtype="float32", init_std=0.2)
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    convert.to_hf(Config(model=cfg), nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param), path)
    shutil.copy(gpt2_style_tokenizer / "tokenizer.json", path)
    return path


@pytest.fixture(scope="module")
def ckpt(hf_dir: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    assert main(["convert", "from-hf", str(hf_dir), str(out)]) == 0
    return out


def test_from_hf_stores_the_tokenizer(hf_dir: Path, ckpt: Path, capsys) -> None:
    from gpt3_jax import checkpoint

    stored = checkpoint.tokenizer_path(ckpt)
    assert stored == ckpt / "tokenizer.json"
    assert stored.read_bytes() == (hf_dir / "tokenizer.json").read_bytes()  # byte for byte


def test_from_hf_takes_vocab_and_merges(hf_dir: Path, tmp_path: Path, capsys) -> None:
    from tokenizers import Tokenizer

    old = shutil.copytree(hf_dir, tmp_path / "old")
    Tokenizer.from_file(str(old / "tokenizer.json")).model.save(str(old))  # vocab.json + merges.txt
    (old / "tokenizer.json").unlink()
    code, out, _ = run_cli(capsys, "convert", "from-hf", old, tmp_path / "ckpt")
    assert code == 0 and "tokenizer:" in out and "512 tokens" in out
    tok = load_tokenizer(tmp_path / "ckpt")
    assert tok.encode(PROMPT) == load_tokenizer(hf_dir).encode(PROMPT)


def test_sample_and_eval_use_gpt2_ids(hf_dir: Path, ckpt: Path, tmp_path: Path, capsys) -> None:
    tok = load_tokenizer(hf_dir)
    code, out, _ = run_cli(
        capsys, "sample", "--checkpoint", ckpt, "--prompt", PROMPT, "--temperature", "0",
        "--max-new-tokens", "8", "--json",
    )  # fmt: skip
    result = json.loads(out)
    assert code == 0 and result["prompt_tokens"] == len(tok.encode(PROMPT))
    assert result["samples"][0]["text"] == tok.decode(result["samples"][0]["ids"])

    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question:\n" * 8)
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", ckpt, "--input", text, "--json")
    assert code == 0
    assert json.loads(out)["tokens"] == len(tok.encode(text.read_text()))  # [eot, *ids]: every id scored


@pytest.mark.slow
def test_fine_tuning_keeps_the_gpt2_tokenizer(hf_dir: Path, ckpt: Path, tmp_path: Path) -> None:
    """``train.init_from`` a converted GPT-2 with no data.tokenizer: the data is prepared with
    GPT-2's BPE and the run stores that tokenizer beside its checkpoints."""
    from gpt3_jax.config import load_config
    from gpt3_jax.data import PreparedData
    from gpt3_jax.training.loop import train

    tok = load_tokenizer(hf_dir)
    text = tmp_path / "new.txt"
    text.write_text("Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 40)
    shape = [f"model.{k}={v}" for k, v in SHAPE.items()]
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *shape,
            "model.attention_pattern=[dense]",
            "model.dtype=float32",
            f"train.init_from={ckpt}",
            f"data.input=[{text}]",
            "data.val_fraction=0.1",
            f"run.workdir={tmp_path / 'run'}",
            "train.steps=2",
            "train.batch_size=8",
            "train.eval_every=2",
            "train.eval_batches=1",
            "train.sample_tokens=0",
            "checkpoint.every=2",
        ],
    )
    summary = train(cfg, progress=False)
    assert summary["steps"] == 2 and np.isfinite(summary["eval_loss"])
    stored = tmp_path / "run" / "checkpoints" / "tokenizer.json"
    assert stored.read_bytes() == tok.model_bytes()
    (prepared,) = (tmp_path / "run" / "data").glob("tokens-*")
    data = PreparedData.load(prepared)
    assert data.meta["tokenizer"]["sha256"] == tok.checksum and data.tokenizer.checksum == tok.checksum
    stream = data.train_stream().read(0, 20).tolist()
    assert stream == tok.encode(text.read_text())[:20]  # GPT-2's ids, not a newly trained tokenizer's


@pytest.mark.parametrize(
    "case, expected",
    [
        ("broken", "not a valid Hugging Face tokenizer.json"),
        ("too_big", "the tokenizer has 512 tokens but config.json's vocab_size is 300"),
        ("vocab_only", "holds no tokenizer"),
    ],
)
def test_from_hf_bad_tokenizer_is_one_line_error(
    hf_dir: Path, tmp_path: Path, capsys, case, expected
) -> None:
    src = shutil.copytree(hf_dir, tmp_path / "hf")
    if case == "broken":
        (src / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    elif case == "too_big":
        hf_cfg = json.loads((src / "config.json").read_text())
        hf_cfg["vocab_size"] = 300
        (src / "config.json").write_text(json.dumps(hf_cfg))
        from safetensors.numpy import load_file, save_file

        tensors = load_file(src / "model.safetensors")
        tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"][:300]
        save_file(tensors, src / "model.safetensors")
    else:
        (src / "tokenizer.json").unlink()
        (src / "vocab.json").write_text("{}")
    code, _, err = run_cli(capsys, "convert", "from-hf", src, tmp_path / "out")
    assert code == 2 and err.startswith("error:") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.compare
def test_greedy_sample_matches_transformers_generate(transformers_gpt2, capsys) -> None:
    import torch

    model, tokenizer, root = transformers_gpt2
    code, out, _ = run_cli(
        capsys, "sample", "--checkpoint", root / "ckpt", "--prompt", PROMPT, "--temperature", "0",
        "--max-new-tokens", "24", "--json",
    )  # fmt: skip
    assert code == 0
    ours = json.loads(out)["samples"][0]

    prompt = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    assert json.loads(out)["prompt_tokens"] == prompt.shape[1]
    with torch.no_grad():
        generated = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False, pad_token_id=0
        )
    theirs = generated[0, prompt.shape[1] :].tolist()
    theirs = theirs[: theirs.index(0)] if 0 in theirs else theirs  # up to end of text, as ours
    assert ours["ids"] == theirs and len(theirs) > 0
    text = tokenizer.decode(theirs, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert ours["text"] == text


@pytest.mark.compare
def test_to_hf_writes_the_tokenizer_back(transformers_gpt2, tmp_path: Path, capsys) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    _, tokenizer, root = transformers_gpt2
    code, out, _ = run_cli(capsys, "convert", "to-hf", root / "ckpt", tmp_path / "back")
    assert code == 0 and "AutoTokenizer.from_pretrained" in out
    back = AutoTokenizer.from_pretrained(tmp_path / "back")
    text = "Hello , world .\n\n  To be, or not to be 😀"
    assert (
        back(text)["input_ids"] == tokenizer(text)["input_ids"] == load_tokenizer(root / "ckpt").encode(text)
    )
    assert back.decode(back(text)["input_ids"]) == text  # no clean-up of spaces
    assert back.eos_token == "<|endoftext|>" and back.eos_token_id == 0
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "back").config.eos_token_id == 0
