"""Resuming: a restarted run continues bit for bit where its checkpoint left off — after a crash
(kill -9), after a preemption (SIGTERM) — and on another mesh within float32 tolerance.

The default test resumes in-process from a copy of a finished run whose last checkpoint was
removed (what a crash between two saves leaves behind). The slow ones run the trainer as a
subprocess and really kill it; a small driver slows each step down after step N (a host-side
sleep; the numbers are untouched) so the kill lands between the step-N save and the end.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_training import TextData, cli_args, losses, make_text_data, tiny_config
from test_training import compilation_cache as compilation_cache  # noqa: F401 - autouse fixture

DRIVER = """
import sys, time
from gpt3_jax.training import loop

slow_after = int(sys.argv[1])
make = loop.jit_train_step

def slowed(*args, **kwargs):
    step, calls = make(*args, **kwargs), [0]
    def run(state, batch):
        calls[0] += 1
        if calls[0] > slow_after:
            time.sleep(0.5)
        return step(state, batch)
    return run

loop.jit_train_step = slowed
from gpt3_jax.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextData:
    return make_text_data(tmp_path_factory.mktemp("text"))


def test_resume_after_a_crash_is_bitwise_exact(data: TextData, tmp_path: Path) -> None:
    from gpt3_jax.training.loop import train
    from gpt3_jax.training.metrics import read_metrics

    ref = tmp_path / "ref"
    overrides = ("train.steps=6", "train.eval_every=3", "checkpoint.every=3")
    train(tiny_config(ref, data, *overrides), progress=False)

    # a crash after step 6 was logged but before its checkpoint was written
    crashed = tmp_path / "crashed"
    shutil.copytree(ref, crashed, ignore=shutil.ignore_patterns("6"))
    summary = train(tiny_config(crashed, data, *overrides), progress=False)
    assert summary["start_step"] == 3 and summary["steps"] == 6
    assert losses(crashed) == losses(ref)  # steps 4-6 again, the same to the bit
    steps = [(r["step"], "loss" in r) for r in read_metrics(crashed)]
    assert len(steps) == len(set(steps)), "metrics.jsonl repeats steps after a resume"
    evals = [r["eval_loss"] for r in read_metrics(crashed) if "eval_loss" in r]
    assert evals == [r["eval_loss"] for r in read_metrics(ref) if "eval_loss" in r]


def test_finished_run_resumes_to_nothing(data: TextData, tmp_path: Path) -> None:
    from gpt3_jax.training.loop import train

    cfg = tiny_config(tmp_path, data, "train.steps=2")
    train(cfg, progress=False)
    again = train(cfg, progress=False)
    assert again["start_step"] == again["steps"] == 2


# --- subprocesses, really killed ----------------------------------------------------------


def _env(devices: int | None = None) -> dict[str, str]:
    import jax

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    env["JAX_COMPILATION_CACHE_DIR"] = str(jax.config.jax_compilation_cache_dir or "")
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _start(args: list[str], slow_after: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(slow_after), *args, "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_checkpoint(workdir: Path, step: int, proc: subprocess.Popen, timeout: float = 600) -> None:
    done = workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA"  # in the final folder only
    deadline = time.monotonic() + timeout
    while not done.exists():
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before checkpoint {step}:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no checkpoint {step} after {timeout} s")
        time.sleep(0.05)


def _cli(args: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gpt3_jax", *args, "--no-progress"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def reference_40(data: TextData, tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """An uninterrupted 40-step run (the same program as the subprocesses: 8 devices, fsdp=8)."""
    from gpt3_jax.training.loop import train

    workdir = tmp_path_factory.mktemp("ref40")
    train(tiny_config(workdir, data, "train.steps=40", "checkpoint.every=20"), progress=False)
    return losses(workdir)


@pytest.mark.slow
def test_kill_9_after_step_20_then_resume_matches(reference_40, data: TextData, tmp_path: Path) -> None:
    args = cli_args(tmp_path, data, "train.steps=40", "checkpoint.every=20")
    proc = _start(args, slow_after=20, env=_env())
    _wait_for_checkpoint(tmp_path, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "checkpoints" / "40").exists()
    _cli(args, _env())
    got = losses(tmp_path)
    assert [got[s] for s in range(21, 41)] == [reference_40[s] for s in range(21, 41)]


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resume_matches(reference_40, data: TextData, tmp_path: Path) -> None:
    args = cli_args(tmp_path, data, "train.steps=40", "checkpoint.every=20")
    proc = _start(args, slow_after=20, env=_env())
    _wait_for_checkpoint(tmp_path, 20, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "received SIGTERM" in out
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert 20 < saved[-1] < 40, f"SIGTERM should save the step it stopped at, got {saved}"
    _cli(args, _env())
    got = losses(tmp_path)
    assert [got[s] for s in range(21, 41)] == [reference_40[s] for s in range(21, 41)]


@pytest.mark.slow
def test_resume_on_another_mesh(data: TextData, tmp_path: Path) -> None:
    """Saved on fsdp=4, resumed on data=2 × fsdp=2 (4 simulated devices): the restore targets
    carry the new mesh's shardings; the losses continue within float32 tolerance."""
    env = _env(devices=4)
    fsdp4 = ("mesh.data=1", "mesh.fsdp=4", "checkpoint.every=20")
    _cli(cli_args(tmp_path / "ref", data, "train.steps=40", *fsdp4), env)
    _cli(cli_args(tmp_path / "moved", data, "train.steps=20", *fsdp4), env)
    out = _cli(cli_args(tmp_path / "moved", data, "train.steps=40", "mesh.data=2", "mesh.fsdp=2"), env)
    assert "resumed from step 20" in out and "'data': 2, 'fsdp': 2" in out
    ref, moved = losses(tmp_path / "ref"), losses(tmp_path / "moved")
    assert [moved[s] for s in range(1, 21)] == [ref[s] for s in range(1, 21)]
    a, b = np.array([ref[s] for s in range(21, 41)]), np.array([moved[s] for s in range(21, 41)])
    np.testing.assert_allclose(b, a, rtol=1e-4)
