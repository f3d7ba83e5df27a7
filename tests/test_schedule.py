"""GPT-3's learning-rate schedule, batch ramp and AdamW recipe against hand-computed values."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from gpt3_jax.config import Config, ModelConfig, OptimConfig, TrainConfig
from gpt3_jax.errors import UserError
from gpt3_jax.training.optim import (
    check_ramp,
    decay_mask,
    learning_rate,
    make_optimizer,
    ramp_micro_batches,
)

# peak 1, floor 0.1, warmup over 100 tokens, cosine to the floor at 1100 tokens
SCHEDULE = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_tokens=100, decay_tokens=1100)


@pytest.mark.parametrize(
    "tokens, expected",
    [
        (0, 0.0),  # warmup starts at zero
        (25, 0.25),  # linear warmup
        (50, 0.5),
        (100, 1.0),  # the peak, where the cosine starts
        (350, 0.1 + 0.45 * (1 + math.cos(math.pi / 4))),  # a quarter of the way down
        (600, 0.55),  # halfway: floor + half of (peak - floor)
        (1100, 0.1),  # the floor
        (5000, 0.1),  # and it stays there
    ],
)
def test_learning_rate_warmup_cosine_floor(tokens: float, expected: float) -> None:
    assert float(learning_rate(SCHEDULE, tokens)) == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_learning_rate_is_monotone_after_warmup() -> None:
    lrs = np.asarray(learning_rate(SCHEDULE, jnp.arange(100, 1200, 10)))
    assert np.all(np.diff(lrs) <= 1e-7)


def test_gpt3_paper_lengths_by_default() -> None:
    cfg = OptimConfig()  # 375M warmup, 260B decay, 10% floor (appendix B)
    peak = cfg.lr
    assert float(learning_rate(cfg, 187.5e6)) == pytest.approx(peak / 2, rel=1e-5)
    assert float(learning_rate(cfg, 375e6)) == pytest.approx(peak, rel=1e-5)
    assert float(learning_rate(cfg, 300e9)) == pytest.approx(0.1 * peak, rel=1e-5)


def ramp_config(ramp_tokens: float) -> Config:
    # micro-batches of 2 sequences of 64 tokens; full batch 16 sequences = 8 micro-batches;
    # the ramp starts at 128 tokens = 2 sequences
    return Config(
        model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=64, vocab_size=128),
        optim=OptimConfig(ramp_start_tokens=128, ramp_tokens=ramp_tokens),
        train=TrainConfig(batch_size=16, micro_batches=8),
    )


@pytest.mark.parametrize(
    "tokens_seen, expected",
    [
        (0, 1),  # 2 sequences = 1 micro-batch
        (250, 3),  # 2 + 14·0.25 = 5.5 sequences → 3 micro-batches (rounded up)
        (500, 5),  # 2 + 14·0.5 = 9 → 5
        (750, 7),  # 2 + 14·0.75 = 12.5 → 7
        (1000, 8),  # the full batch
        (10**9, 8),
    ],
)
def test_batch_ramp_in_whole_micro_batches(tokens_seen: int, expected: int) -> None:
    assert ramp_micro_batches(ramp_config(1000), tokens_seen) == expected


def test_no_ramp_uses_every_micro_batch() -> None:
    assert ramp_micro_batches(ramp_config(0), 0) == 8


def test_ramp_needs_micro_batches() -> None:
    cfg = Config(optim=OptimConfig(ramp_tokens=1000), train=TrainConfig(batch_size=8, micro_batches=1))
    with pytest.raises(UserError, match="micro_batches"):
        check_ramp(cfg)


def test_weight_decay_on_matrices_only() -> None:
    params = {
        "embed": {"wte": 1, "wpe": 1},
        "mlp": {"c_fc_w": 1, "c_fc_b": 1},
        "ln_1": {"scale": 1, "bias": 1},
    }
    mask = decay_mask(params)
    assert mask == {
        "embed": {"wte": True, "wpe": True},
        "mlp": {"c_fc_w": True, "c_fc_b": False},
        "ln_1": {"scale": False, "bias": False},
    }


def test_first_adamw_step_by_hand() -> None:
    """Adam's first step moves every weight by lr·g/(|g|+ε) ≈ lr (m̂ = g, v̂ = g²), whatever the
    clipping; decoupled weight decay adds lr·wd·w on matrices only."""
    cfg = OptimConfig(lr=0.1, weight_decay=0.1, grad_clip=1.0)
    tx = make_optimizer(cfg)
    params = {"c_fc_w": jnp.full((2, 2), 1.0), "c_fc_b": jnp.full((2,), 1.0)}
    grads = {"c_fc_w": jnp.full((2, 2), 0.5), "c_fc_b": jnp.full((2,), -0.5)}  # norm √1.5 > 1: clipped
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["c_fc_w"], -0.1 * (1 + 0.1 * 1.0), rtol=1e-6)
    np.testing.assert_allclose(updates["c_fc_b"], +0.1, rtol=1e-6)


def test_decay_mask_on_the_model_state(tiny_model_config) -> None:
    """The mask works on the NNX state the trainer optimises, not just on plain dicts."""
    import jax

    from gpt3_jax.model import abstract_gpt

    _, params = abstract_gpt(tiny_model_config)
    mask = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    decayed = {k for k, m in mask.items() if m}
    assert any("'wte'" in k for k in decayed) and any("'c_fc_w'" in k for k in decayed)
    assert not any("'ln_" in k or "_b'" in k or "'ln_f'" in k for k in decayed)
    # wte, wpe, and the four block matrices of each position in the attention pattern (stacked over groups)
    assert len(decayed) == 2 + 4 * len(tiny_model_config.attention_pattern)
