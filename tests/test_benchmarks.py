"""The benchmark scripts run end to end (tiny ``--smoke`` configurations) and print what the docs
read from them. No speed is asserted: timings depend on the machine and its load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_json(script: str, *args: str) -> dict:
    """Run ``benchmarks/SCRIPT --smoke --json ARGS`` and parse its one JSON line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--json", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, out.stdout
    return json.loads(lines[0])


def positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.compare
def test_compare_hf_smoke_prints_the_ratios() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = run_json("compare_hf.py")
    for key in ("train_ratio", "decode_ratio", "train_gflops_fraction", "decode_bandwidth_fraction"):
        assert positive(out[key]), (key, out[key])
    assert positive(out["ours_tok_s"]) and positive(out["hf_tok_s"]) and positive(out["gemm_gflops"])
    assert out["decode_same_greedy_tokens"] is True  # the two models decode the same weights
    assert len(out["load_average"]) == 3 and out["date"] and out["machine"]


def test_bench_attention_smoke_prints_both_ratios() -> None:
    out = run_json("bench_attention.py")
    assert positive(out["banded_ratio"]) and positive(out["dense_ratio"])
    kinds = {(r["kind"], r["T"]) for r in out["rows"]}
    assert kinds == {("local", 64), ("dense", 64)}
    assert all(positive(r["xla_s"]) and positive(r["blockwise_s"]) for r in out["rows"])
    assert len(out["load_average"]) == 3
