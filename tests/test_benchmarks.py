"""The benchmark scripts run end to end (tiny ``--smoke`` configurations) and print what the docs
read from them. No speed is asserted: timings depend on the machine and its load."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def import_benchmark(name: str):  # noqa: ANN201 - a module
    """``benchmarks/NAME.py`` as a module (the scripts import their siblings by bare name)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def positive(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def printed_ratio(num: float, den: float) -> Any:
    """``num / den`` for ``pytest.approx``: a benchmark's printed ratio against the ratio of its
    printed values, each rounded to 3 decimals (``benchmarks/common.rounded``): within 1 %, or
    within what that rounding leaves (small smoke-test times in ms)."""
    ratio, half = num / den, 0.5e-3
    return pytest.approx(ratio, rel=1e-2, abs=ratio * (half / num + half / den) + half)


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_attention_smoke_prints_both_ratios() -> None:
    out = run_json("bench_attention.py", "--floor")
    assert positive(out["banded_ratio"]) and positive(out["dense_ratio"])
    kinds = {(r["kind"], r["T"]) for r in out["rows"]}
    assert kinds == {("local", 64), ("dense", 64)}
    assert all(positive(r["xla_s"]) and positive(r["blockwise_s"]) for r in out["rows"])
    assert all(positive(r["no_attention_s"]) and positive(r["floor_ratio"]) for r in out["rows"])
    assert len(out["load_average"]) == 3


def test_nanogpt_checkout_runs_with_our_text_and_the_readme_setting(tmp_path: Path) -> None:
    """``bench_shakespeare.py --nanogpt-dir``: nanoGPT's prepare.py finds our text (so it downloads
    nothing), train.py gets the README's CPU setting, and its last eval line is read. The checkout
    here is a stand-in with nanoGPT's layout whose scripts record what they were given."""
    bench = import_benchmark("bench_shakespeare")
    checkout = tmp_path / "nanoGPT"
    (checkout / "data" / "shakespeare_char").mkdir(parents=True)
    (checkout / "config").mkdir()
    (checkout / "config" / "train_shakespeare_char.py").write_text("")
    (checkout / "data" / "shakespeare_char" / "prepare.py").write_text(
        "import os, sys\nd = os.path.dirname(__file__)\n"
        "assert os.path.exists(os.path.join(d, 'input.txt')), 'would download'\n"
        "open(os.path.join(d, 'train.bin'), 'w').write(open(os.path.join(d, 'input.txt')).read())\n"
    )
    (checkout / "train.py").write_text(
        "import sys\nassert open('data/shakespeare_char/train.bin').read() == 'to be or not'\n"
        "print('step 0: train loss 4.2000, val loss 4.3000')\n"
        "val = '1.8800' if '--max_iters=2000' in sys.argv else '9'\n"
        "print('step 2000: train loss 1.6000, val loss ' + val)\n"
    )
    text = tmp_path / "text.txt"
    text.write_text("to be or not")
    out = bench.run_nanogpt_checkout(checkout, text)
    assert out["val_loss"] == 1.88 and out["step"] == 2000 and positive(out["wall_s"])
    assert out["command"] == "train.py config/train_shakespeare_char.py " + " ".join(bench.NANOGPT_ARGS)
    assert not (checkout / "data" / "shakespeare_char" / "input.txt").exists()  # the checkout is untouched
    with pytest.raises(SystemExit, match="not a nanoGPT checkout"):
        bench.run_nanogpt_checkout(tmp_path, text)


def test_shakespeare_repeats_report_medians() -> None:
    """``bench_shakespeare.py --repeats``: each program's median wall time, every run's beside it."""
    combine = import_benchmark("bench_shakespeare").combine
    runs = [{"val_loss": 1.88, "wall_s": w} for w in (70.0, 90.0, 65.0)]
    assert combine(runs) == {"val_loss": 1.88, "wall_s": 70.0, "wall_s_runs": [70.0, 90.0, 65.0]}
    assert combine(runs[:2])["wall_s"] == 80.0 and combine(runs[:1])["wall_s"] == 70.0


@pytest.mark.slow
def test_bench_loss_smoke_prints_both_forms() -> None:
    out = run_json("bench_loss.py")
    for key in ("loss_ms_no_select", "loss_ms_select", "step_tok_s_no_select", "step_tok_s_select"):
        assert positive(out[key]), key
    assert out["loss_ratio"] == printed_ratio(out["loss_ms_select"], out["loss_ms_no_select"])
    assert out["step_ratio"] == printed_ratio(out["step_tok_s_no_select"], out["step_tok_s_select"])


@pytest.mark.slow
def test_bench_host_memory_smoke_runs_both_modes() -> None:
    out = run_json("bench_host_memory.py")
    for key in ("keep_tok_s", "plain_tok_s"):
        assert positive(out[key]), key
    for key in ("keep_faults_per_step", "plain_faults_per_step", "keep_sys_ms_per_step"):
        assert out[key] >= 0, key
    assert out["speedup"] == printed_ratio(out["keep_tok_s"], out["plain_tok_s"])


@pytest.mark.slow
def test_bench_projection_smoke_times_both_forms() -> None:
    out = run_json("bench_projection.py")
    for piece in ("mlp", "unembed"):
        for form in ("rows", "bt"):
            assert positive(out[f"{piece}_{form}_ms"]), (piece, form)
        assert out[f"{piece}_ratio"] == printed_ratio(out[f"{piece}_bt_ms"], out[f"{piece}_rows_ms"])


@pytest.mark.slow
def test_bench_step_cores_smoke_times_both_on_each_core_count() -> None:
    pytest.importorskip("torch")
    out = run_json("bench_step_cores.py")
    cores = sorted({1, len(os.sched_getaffinity(0))})
    for n in cores:
        assert positive(out[f"ours_ms_{n}"]) and positive(out[f"theirs_ms_{n}"]), n
        assert out[f"ratio_{n}"] == printed_ratio(out[f"ours_ms_{n}"], out[f"theirs_ms_{n}"])
    if len(cores) > 1:
        assert out["ours_scaling"] == printed_ratio(out["ours_ms_1"], out[f"ours_ms_{cores[-1]}"])
    assert len(out["machine"]["load_average"]) == 3


@pytest.mark.slow
def test_bench_init_smoke_times_both_option_sets() -> None:
    out = run_json("bench_init.py")
    assert positive(out["tiny_xla_s"]) and positive(out["tiny_ours_s"])
    assert out["tiny_speedup"] == printed_ratio(out["tiny_xla_s"], out["tiny_ours_s"])


@pytest.mark.slow
def test_bench_softmax_smoke_times_both_forms() -> None:
    out = run_json("bench_softmax.py")
    for form in ("attend", "textbook"):
        assert positive(out[f"smoke_{form}_ms"]) and out[f"smoke_{form}_temp_mib"] >= 0, form
    assert out["smoke_speedup"] == printed_ratio(out["smoke_textbook_ms"], out["smoke_attend_ms"])


@pytest.mark.slow
def test_bench_gelu_smoke_times_both_forms() -> None:
    out = run_json("bench_gelu.py")
    for form in ("ours", "autodiff"):
        assert positive(out[f"{form}_ms"]), form
        assert positive(out[f"{form}_temp_mib"]), form
    assert out["ratio"] == printed_ratio(out["autodiff_ms"], out["ours_ms"])
