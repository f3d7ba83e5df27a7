"""Hugging Face GPT-2 interchange: converted weights give PyTorch's logits, both directions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax.cli import main

HF_SHAPE = dict(n_layer=3, n_head=5, n_embd=80, vocab_size=1000, n_positions=64)  # small, non-square


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory):
    """A random GPT2LMHeadModel saved with save_pretrained, every weight perturbed (biases and
    LayerNorms too, so a mis-mapped bias cannot hide behind GPT-2's zero init)."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**HF_SHAPE)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("hf") / "gpt2"
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, HF_SHAPE["vocab_size"], (2, HF_SHAPE["n_positions"]))


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(tokens)).logits.numpy()


@pytest.mark.compare
def test_from_hf_cli_matches_pytorch(hf_model, tokens, tmp_path: Path, capsys) -> None:
    from gpt3_jax.checkpoint import load_model

    model, hf_dir = hf_model
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "--prompt-ids" in out  # no tokenizer in the folder: ids still work
    cfg, ours = load_model(tmp_path / "ckpt")
    assert cfg.model.attention_pattern == ("dense",) and cfg.model.n_ctx == 64
    logits = np.asarray(ours(tokens)[0])
    assert logits.shape == (*tokens.shape, cfg.model.padded_vocab)
    diff = np.abs(logits[..., : HF_SHAPE["vocab_size"]] - torch_logits(model, tokens)).max()
    print(f"from-hf max |logit diff| = {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.compare
def test_to_hf_round_trip_gives_same_logits(hf_model, tokens, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    model, hf_dir = hf_model
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "ckpt")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "back")]) == 0
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    diff = np.abs(torch_logits(back, tokens) - torch_logits(model, tokens)).max()
    print(f"to-hf round trip max |logit diff| = {diff:.2e}")
    assert diff < 1e-6


@pytest.mark.compare
def test_python_from_hf_returns_config_and_model(hf_model, tokens) -> None:
    from gpt3_jax import convert

    model, hf_dir = hf_model
    cfg, ours = convert.from_hf(hf_dir)
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == (3, 80, 5)
    padded = np.asarray(ours.embed.wte[...])[HF_SHAPE["vocab_size"] :]
    assert not padded.any()  # padded vocabulary rows are zeros
    diff = np.abs(np.asarray(ours(tokens)[0])[..., :1000] - torch_logits(model, tokens)).max()
    assert diff < 1e-4


def test_to_hf_refuses_local_attention(tmp_path: Path, tiny_model_config, capsys) -> None:
    import jax

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.config import Config
    from gpt3_jax.model import abstract_gpt

    cfg = Config(model=tiny_model_config)  # pattern [dense, local]
    _, abstract = abstract_gpt(cfg.model)  # zeros of the right shapes: no need to initialise a model
    save_params(
        tmp_path / "ckpt", cfg, jax.tree.map(lambda v: np.zeros(v.shape, v.dtype), abstract.to_pure_dict())
    )
    assert main(["convert", "to-hf", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "local" in err and "\n" not in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "config, weights, expected",
    [
        (None, False, "config.json"),
        ({"model_type": "llama"}, True, "not 'gpt2'"),
        ({"model_type": "gpt2", "activation_function": "relu"}, True, "tanh GELU"),
        ({"model_type": "gpt2", "n_embd": 80, "n_head": 3}, True, "model.n_head"),
        ({"model_type": "gpt2"}, False, "no model.safetensors"),
    ],
)
def test_from_hf_bad_input_is_one_line_error(tmp_path: Path, capsys, config, weights, expected) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    if config is not None:
        (hf_dir / "config.json").write_text(json.dumps(config))
    if weights:
        (hf_dir / "model.safetensors").write_bytes(b"")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and "\n" not in err


def test_from_hf_missing_tensor_is_one_line_error(tmp_path: Path, capsys) -> None:
    from safetensors.numpy import save_file

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(
        json.dumps(
            {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 10, "n_positions": 4}
        )
    )
    save_file({"transformer.wte.weight": np.zeros((10, 8), np.float32)}, hf_dir / "model.safetensors")
    assert main(["convert", "from-hf", str(hf_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and "\n" not in err


@pytest.mark.compare
def test_from_hf_reads_sharded_safetensors_and_pytorch_bin(hf_model, tokens, tmp_path: Path) -> None:
    import shutil

    import torch

    from gpt3_jax import convert

    model, hf_dir = hf_model
    want = convert.read_hf_weights(hf_dir)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file() and not (
        sharded / "model.safetensors"
    ).exists()
    got = convert.read_hf_weights(sharded)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)

    bin_dir = tmp_path / "bin"  # an old-style directory: a pickled state dict, lm_head included
    bin_dir.mkdir()
    shutil.copy(hf_dir / "config.json", bin_dir)
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    _, ours = convert.from_hf(bin_dir)
    diff = np.abs(np.asarray(ours(tokens)[0])[..., :1000] - torch_logits(model, tokens)).max()
    assert diff < 1e-4
