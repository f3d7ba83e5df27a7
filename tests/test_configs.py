"""Every preset loads and builds; the paper presets have the paper's size (Table 2.1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpt3_jax.config import load_config
from gpt3_jax.info import count

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER_PARAMS = {  # n_params of Table 2.1 (Brown et al. 2020)
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 175.0e9,
}
PAPER_BATCH_TOKENS = {  # Table 2.1 batch, millions of tokens: 0.5M = 256 × 2048 (2^19), 3.2M ≈ 1536 × 2048
    "gpt3-small": 0.5,
    "gpt3-medium": 0.5,
    "gpt3-large": 0.5,
    "gpt3-xl": 1.0,
    "gpt3-2.7b": 1.0,
    "gpt3-6.7b": 2.0,
    "gpt3-13b": 2.0,
    "gpt3-175b": 3.2,
}
ALL = sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def test_presets_exist() -> None:
    assert set(PAPER_PARAMS) | {"demo", "tiny", "shakespeare-char"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_every_config_loads_and_builds_abstractly(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    info = count(cfg.model)  # nnx.eval_shape of the real GPT
    assert info.params > 0 and info.flops_per_token > 0
    assert cfg.train.batch_size % cfg.train.micro_batches == 0
    header = (CONFIGS / f"{name}.yaml").read_text().splitlines()[:3]
    assert all(line.startswith("#") for line in header), "each preset starts with its header comment"
    assert f"configs/{name}.yaml" in (CONFIGS / f"{name}.yaml").read_text(), "header has the launch command"


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_preset_matches_table(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    params = count(cfg.model).params
    assert abs(params / PAPER_PARAMS[name] - 1) < 0.02, f"{name}: {params:,} vs {PAPER_PARAMS[name]:,.0f}"
    tokens = cfg.train.batch_size * cfg.model.n_ctx
    assert abs(tokens / (PAPER_BATCH_TOKENS[name] * 1e6) - 1) < 0.05
    assert cfg.model.n_ctx == 2048 and cfg.model.attention_pattern == ("dense", "local")
    assert cfg.optim.ramp_tokens > 0 and cfg.train.micro_batches > 1  # the ramp moves in micro-batches
    steps_tokens = cfg.train.steps * tokens
    assert 300e9 <= steps_tokens < 300e9 + tokens  # 300B tokens, as the paper


def test_175b_cli_json_reports_175b_params() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpt3_jax", "info", str(CONFIGS / "gpt3-175b.yaml"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    assert 174e9 <= info["params"] <= 176e9
    assert info["non_embedding_params"] < info["params"]
    assert {"flops_per_token", "vocab_size", "padded_vocab", "breakdown", "layers"} <= set(info)
    assert info["vocab_size"] == 50257 and info["padded_vocab"] == 50304
    assert sum(info["breakdown"].values()) == info["params"]


def test_info_counts_follow_the_model_not_a_formula(tiny_model_config) -> None:
    """Cross-check: the breakdown equals the shapes of a real (materialised) model's params."""
    import math

    import jax
    from flax import nnx

    from gpt3_jax.model import GPT

    model = GPT(tiny_model_config, rngs=nnx.Rngs(0))
    real = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    info = count(tiny_model_config)
    assert info.params == real
    d, v = tiny_model_config.d_model, tiny_model_config.padded_vocab
    assert info.breakdown["token_embedding"] == v * d
    assert info.non_embedding_params == real - v * d - tiny_model_config.n_ctx * d


def test_flops_per_token_by_hand(tiny_model_config) -> None:
    """The tiny config (4 layers [dense, local], d 64, context 64, window 8, vocab 300 → 384),
    counted by hand: per layer 12·d² = 49,152 matmul weights (qkv 3d², out d², MLP 8d²), the
    unembedding 384·64 = 24,576; 6·(4·49,152 + 24,576) = 1,327,104. Attention 12·d·k per layer.
    Model FLOPs (the keys each query sees): dense k = T/2 = 32 → 24,576; local k = 8 − 64/128 =
    7.5 → 5,760; two of each → 60,672. Computed by xla (every key scored, k = 64): 4·49,152 =
    196,608. By blockwise with blocks of 16: dense reads 16·16·(1+2+3+4)/64 = 40 keys per query
    → 30,720; local reads 16·(16 + 3·(16+7))/64 = 21.25 → 16,320; two of each → 94,080."""
    import dataclasses

    xla = count(dataclasses.replace(tiny_model_config, attention_impl="xla"))
    assert xla.model_attention_flops_per_token == 60_672
    assert xla.model_flops_per_token == 1_327_104 + 60_672
    assert xla.attention_flops_per_token == 196_608 and xla.attention_impl == "xla"
    blocked = count(dataclasses.replace(tiny_model_config, attention_impl="blockwise", attention_block=16))
    assert blocked.attention_flops_per_token == 94_080
    assert blocked.flops_per_token == 1_327_104 + 94_080
    t, d, layers = tiny_model_config.n_ctx, tiny_model_config.d_model, tiny_model_config.n_layer
    dense = count(dataclasses.replace(tiny_model_config, attention_pattern=("dense",)))
    assert dense.model_attention_flops_per_token == layers * 6 * t * d  # the usual 6·L·T·d
    wide = count(dataclasses.replace(tiny_model_config, local_window=10 * t))
    assert wide.model_attention_flops_per_token == dense.model_attention_flops_per_token  # window covers T


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_pod_presets_stop_until_the_workdir_is_set(name: str, capsys) -> None:
    """The presets for multi-host hardware default run.workdir to a placeholder bucket: training
    with it stops at once, with one line naming the override; any other workdir passes."""
    from gpt3_jax.cli import main
    from gpt3_jax.config import WORKDIR_PLACEHOLDER

    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.run.workdir == f"{WORKDIR_PLACEHOLDER}runs/{name}"
    assert main(["train", str(CONFIGS / f"{name}.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: run.workdir: gs://YOUR_BUCKET/runs/{name} is the preset's placeholder; set "
        "run.workdir=gs://YOUR_BUCKET/... to your bucket (or to a folder every host mounts; a local "
        "folder does for one host)"
    ]
    load_config(CONFIGS / f"{name}.yaml", ["run.workdir=gs://my-bucket/runs/x"]).run.require_workdir()
