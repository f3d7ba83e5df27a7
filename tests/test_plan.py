"""The memory planner: it compiles the trainer's own step, and its numbers add up."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gpt3_jax.cli import main
from gpt3_jax.config import load_config
from gpt3_jax.plan import GiB
from gpt3_jax.training import step as step_module

TINY = ["model.dtype=float32", "train.batch_size=16", "train.micro_batches=2"]


def test_plan_compiles_the_trainers_step(monkeypatch, capsys):
    """``gpt3-jax plan`` calls ``jit_train_step`` (spied on here), and what it lowers is, op for op,
    what the trainer's path lowers: concrete, born-sharded state and a device batch. Its JSON
    report has the keys and the numbers add up."""
    lowered = []
    real = step_module.jit_train_step

    def spy(*args, **kwargs):
        jitted = real(*args, **kwargs)

        class Spy:
            def lower(self, *a):
                lowered.append(jitted.lower(*a))
                return lowered[-1]

        return Spy()

    monkeypatch.setattr(step_module, "jit_train_step", spy)
    over = ["mesh.fsdp=4", "mesh.tensor=2", *TINY]
    assert main(["plan", "configs/tiny.yaml", "--devices", "8", *over, "--json"]) == 0
    assert len(lowered) == 1
    monkeypatch.undo()

    plan = json.loads(capsys.readouterr().out)
    for key in ("devices", "mesh", "per_device_bytes", "flops_per_step", "compile_seconds"):
        assert key in plan, key
    assert plan["devices"] == 8 and plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 2}
    assert plan["micro_batches"] == 2 and plan["sequences_per_device"] == 1.0
    by = plan["per_device_bytes"]
    for key in ("params", "optimizer", "temp", "total"):
        assert by[key] > 0, key
    assert plan["flops_per_step"] > 0 and plan["flops_per_step_analytic"] > 0
    assert plan["compile_seconds"] > 0
    # configs/tiny.yaml by hand (4 layers, d 64, 4 heads, f 256, vocab 512, context 64) on fsdp 4 ×
    # tensor 2, float32: wte [512, 64] /8 = 4,096; wpe [64, 64] /4 (embed only) = 1,024; per layer
    # c_attn_w 12,288 /8, c_attn_b 192 /2 (heads), c_proj_w 4,096 /8, c_proj_b 64 /4, ln_1 + ln_2
    # 256 whole, c_fc_w 16,384 /8, c_fc_b 256 /2, mlp c_proj_w 16,384 /8, c_proj_b 64 /4 → 4 layers
    # 6,144 + 384 + 2,048 + 64 + 1,024 + 8,192 + 512 + 8,192 + 64 = 26,624; ln_f 128 whole.
    assert plan["params"] == 236_928
    assert by["params"] == 4 * (4_096 + 1_024 + 26_624 + 128)
    # AdamW: two fp32 moments like the parameters, plus a few scalars
    assert 2 * by["params"] <= by["optimizer"] <= 2 * by["params"] + 1024
    # at its peak the step holds at least the state and a gradient of every parameter
    assert by["total"] >= by["params"] + by["optimizer"] + by["params"]
    # and not much more than the state plus the activations of one micro-batch (8 sequences of 64
    # tokens split over 8 devices: ~100 floats of d per token per layer is a generous bound)
    activations = 8 * 64 // 8 * 4 * 100 * 64 * 4
    assert by["total"] <= 4 * (by["params"] + by["optimizer"]) + activations

    from gpt3_jax.training import init_state, setup

    s = setup(load_config("configs/tiny.yaml", over))
    tokens = np.zeros((2, 8, s.cfg.model.n_ctx), np.int32)
    batch = {k: jax.device_put(tokens, sh) for k, sh in s.train_batch.items()}
    with jax.set_mesh(s.mesh):
        state = init_state(s.cfg, s.tx, s.shardings)
        trainer = step_module.jit_train_step(s).lower(state, batch)
    assert lowered[0].as_text() == trainer.as_text()


@pytest.mark.slow
def test_plan_slices_shard_within_a_slice(capsys):
    """``--slices 2``: the 8 devices form two simulated slices, mesh.dcn_data=2 puts data
    parallelism across them, so fsdp covers a slice's 4 devices and each device holds twice the
    parameter bytes of the one-slice fsdp-8 plan."""
    base = ["plan", "configs/tiny.yaml", "--devices", "8", *TINY, "--json"]
    assert main([*base, "--slices", "2", "mesh.fsdp=-1"]) == 0
    two = json.loads(capsys.readouterr().out)
    assert main([*base, "mesh.fsdp=8"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert two["slices"] == 2 and two["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
    assert one["slices"] == 1 and one["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    ratio = two["per_device_bytes"]["params"] / one["per_device_bytes"]["params"]
    assert 1.8 < ratio <= 2.0  # small unsharded leaves (LayerNorms) are whole in both
    assert main(["plan", "configs/tiny.yaml", "--devices", "8", *TINY, "--slices", "2", "mesh.fsdp=-1"]) == 0
    assert "8 devices in 2 slices of 4 (simulated; the data axis spans them, 2-way over DCN)" in (
        capsys.readouterr().out
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "8", "--slices", "3"], "--slices 3: must be a positive divisor of --devices 8"),
        (["--devices", "8", "--slices", "2", "mesh.dcn_data=4"], "--slices 2 but mesh.dcn_data=4"),
    ],
)
def test_plan_bad_slices_are_one_line_errors(args, message, capsys):
    assert main(["plan", "configs/tiny.yaml", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}")


def _plan_in_subprocess(*args: str) -> dict:
    """``gpt3-jax plan ARGS --json`` in a fresh process (which sets its own device count)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-m", "gpt3_jax", "plan", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_plan_175b_on_512_devices_fits_v5p():
    """MaxText's 175B layout on a TPU v5p-1024 (512 chips): fsdp 64 × tensor 8, 4 sequences of
    2048 per device, full remat. Must fit a v5p's 95 GiB and compile in under two minutes."""
    cfg = "configs/gpt3-175b.yaml"
    over = [
        "mesh.fsdp=64",
        "mesh.tensor=8",
        "train.batch_size=2048",
        "train.micro_batches=1",
        "model.remat=full",
    ]
    plan = _plan_in_subprocess(cfg, "--devices", "512", *over)
    assert plan["devices"] == 512 and plan["mesh"] == {"data": 1, "fsdp": 64, "tensor": 8}
    assert plan["sequences_per_device"] == 4
    assert plan["per_device_bytes"]["total"] <= 95 * GiB
    assert plan["compile_seconds"] < 120


@pytest.mark.slow
def test_plan_175b_on_two_v5p_slices():
    """The 175B preset on two simulated v5p-1024 slices (2 × 512 chips): data parallelism across
    the slices, fsdp 64 × tensor 8 inside each; per-device memory must fit a v5p's 95 GiB."""
    over = ["mesh.fsdp=64", "mesh.tensor=8"]
    plan = _plan_in_subprocess("configs/gpt3-175b.yaml", "--devices", "1024", "--slices", "2", *over)
    assert plan["devices"] == 1024 and plan["slices"] == 2
    assert plan["mesh"] == {"data": 2, "fsdp": 64, "tensor": 8}
    by = plan["per_device_bytes"]
    assert 0 < by["total"] <= 95 * GiB
    # parameters are sharded over one slice's 512 devices (fsdp × tensor), not all 1024
    assert by["params"] == pytest.approx(plan["params"] * 4 / 512, rel=0.05)
