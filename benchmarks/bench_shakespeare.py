"""The learning check: nanoGPT's character-level tiny-Shakespeare CPU setting, timed end to end.

Runs ``gpt3-jax train configs/shakespeare-char.yaml`` (on the package's embedded tiny Shakespeare,
or ``--text FILE``) in a fresh workdir (so the tokenizer and data preparation are part of the
time), reads the final validation loss from its metrics.jsonl, and checks it against nanoGPT's
1.88 (goal: ≤ 1.90). With ``--nanogpt`` it also times ``benchmarks/nanogpt_shakespeare_char.py``
(a PyTorch re-implementation of nanoGPT for the same setting) on the same machine, one after the
other. With ``--nanogpt-dir PATH`` it times nanoGPT itself instead, from a checkout of
karpathy/nanoGPT (nothing is downloaded): a temporary copy of the checkout gets the same text as
``data/shakespeare_char/input.txt`` (so its ``prepare.py`` finds it and fetches nothing), runs
``prepare.py`` and then ``train.py config/train_shakespeare_char.py`` with its README's CPU
setting (``NANOGPT_ARGS``); nanoGPT's time is all in as well (data preparation, every eval).
``--repeats N`` alternates the runs (ours, theirs, ours, theirs, ...) and reports each one's
median wall time and the ratio of the medians, with every run's time beside it: this VM's speed
drifts within an hour, so one run each is a weak comparison.

``gpt3-jax`` keeps XLA's compiled programs between runs (``gpt3_jax/compile_cache.py``).
``--compilation-cache cold`` (the default) gives each of our runs an empty cache: a first run on
a machine. ``warm`` first makes one untimed run of the same config to fill a cache, and the timed
runs load their programs from it: any later run of the preset (a new workdir, as here).

    python benchmarks/bench_shakespeare.py --nanogpt
    python benchmarks/bench_shakespeare.py --nanogpt-dir ~/src/nanoGPT --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import load_average

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "gpt3_jax" / "data" / "corpora" / "tinyshakespeare.txt"  # the preset's corpus
TARGET = 1.90


def run_ours(text: Path | None, workdir: Path, extra: list[str], cache: Path) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "gpt3_jax",
        "train",
        str(ROOT / "configs" / "shakespeare-char.yaml"),
        *([f"data.input=[{text}]"] if text else []),
        f"run.workdir={workdir}",
        *extra,
        "--no-progress",
    ]
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=sys.stderr, env=env)  # stdout: the result only
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval_loss" in r]
    train = [r for r in records if "step_time_s" in r]
    return {
        "val_loss": evals[-1]["eval_loss"],
        "step": evals[-1]["step"],
        "wall_s": wall,
        "median_step_ms": 1e3 * sorted(r["step_time_s"] for r in train)[len(train) // 2],
    }


def run_nanogpt(text: Path, threads: int) -> dict:
    script = ROOT / "benchmarks" / "nanogpt_shakespeare_char.py"
    cmd = [sys.executable, str(script), str(text), "--json", "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# nanoGPT's README, "I only have a macbook" (CPU), with the evals this benchmark's preset makes
NANOGPT_ARGS = (
    "--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
    "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
    "--lr_decay_iters=2000", "--dropout=0.0",
)  # fmt: skip
NANOGPT_EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def run_nanogpt_checkout(checkout: Path, text: Path) -> dict:
    """nanoGPT's own train.py on ``text``, in a temporary copy of ``checkout``; all-in wall time
    and its last eval (nanoGPT's val loss: the mean of ``eval_iters`` random batches)."""
    if not (checkout / "train.py").is_file() or not (checkout / "data" / "shakespeare_char").is_dir():
        sys.exit(f"error: {checkout} is not a nanoGPT checkout (no train.py, data/shakespeare_char)")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "nanoGPT"
        shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "out-*", "*.bin", "*.pkl"))
        shutil.copyfile(text, copy / "data" / "shakespeare_char" / "input.txt")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "data/shakespeare_char/prepare.py"], check=True, cwd=copy,
                       capture_output=True)  # fmt: skip
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_ARGS]
        out = subprocess.run(cmd, check=True, cwd=copy, capture_output=True, text=True).stdout
        wall = time.perf_counter() - t0
    evals = NANOGPT_EVAL.findall(out)
    if not evals:
        sys.exit("error: nanoGPT printed no 'step N: train loss X, val loss Y' line")
    step, _, val = evals[-1]
    return {"val_loss": float(val), "step": int(step), "wall_s": wall, "command": " ".join(cmd[1:])}


def combine(runs: list[dict]) -> dict:
    """Repeats of one program: the last run's record, with the median of the wall times as
    ``wall_s`` and every run's time, in order, as ``wall_s_runs``."""
    walls = [r["wall_s"] for r in runs]
    return {**runs[-1], "wall_s": statistics.median(walls), "wall_s_runs": walls}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", type=Path, help="a text file (default: the embedded tiny Shakespeare)")
    parser.add_argument(
        "--nanogpt", action="store_true", help="also time the PyTorch nanoGPT re-implementation"
    )
    parser.add_argument("--nanogpt-threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--nanogpt-dir", type=Path, help="a karpathy/nanoGPT checkout: time nanoGPT itself, after ours"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each, alternating; medians (default 1)"
    )
    parser.add_argument(
        "--compilation-cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold: each of our runs starts with an empty compilation cache (default); warm: an "
        "untimed run fills one first",
    )
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary folder")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides for our run")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.workdir and args.repeats > 1:
        parser.error("--workdir holds one run: leave it out with --repeats")
    text = args.text.resolve() if args.text else None

    load = load_average()
    runs: dict[str, list[dict]] = {"gpt3_jax": [], "nanogpt_pytorch": [], "nanogpt": []}
    with tempfile.TemporaryDirectory(prefix="bench_shakespeare_xla_") as shared:
        if args.compilation_cache == "warm":  # an untimed run fills the cache the timed ones load
            with tempfile.TemporaryDirectory() as tmp:
                run_ours(text, Path(tmp) / "run", args.overrides, Path(shared))
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                workdir = args.workdir or Path(tmp) / "run"
                cache = Path(shared) if args.compilation_cache == "warm" else Path(tmp) / "xla_cache"
                runs["gpt3_jax"].append(run_ours(text, workdir, args.overrides, cache))
            if args.nanogpt:
                runs["nanogpt_pytorch"].append(run_nanogpt(text or SHAKESPEARE, args.nanogpt_threads))
            if args.nanogpt_dir:
                checkout = args.nanogpt_dir.expanduser()
                runs["nanogpt"].append(run_nanogpt_checkout(checkout, text or SHAKESPEARE))
    ours = combine(runs["gpt3_jax"])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start": load,
        "repeats": args.repeats,
        "compilation_cache": args.compilation_cache,
        "gpt3_jax": ours,
        "passes": ours["val_loss"] <= TARGET,
    }
    if args.nanogpt:
        result["nanogpt_pytorch"] = combine(runs["nanogpt_pytorch"])
    if args.nanogpt_dir:
        theirs = result["nanogpt"] = combine(runs["nanogpt"])
        result["wall_ratio"] = ours["wall_s"] / theirs["wall_s"]  # ours ÷ nanoGPT's; target ≤ 1
        result["meets_speed"] = result["wall_ratio"] <= 1.0
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["passes"] else 1)


if __name__ == "__main__":
    main()
