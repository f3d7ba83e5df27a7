"""The learning check: nanoGPT's character-level tiny-Shakespeare CPU setting, timed end to end.

Runs ``gpt3-jax train configs/shakespeare-char.yaml`` (on the package's embedded tiny Shakespeare,
or ``--text FILE``) in a fresh workdir (so the tokenizer and data preparation are part of the
time), reads the final validation loss from its metrics.jsonl, and checks it against nanoGPT's
1.88 (goal: ≤ 1.90). With ``--nanogpt`` it also times ``benchmarks/nanogpt_shakespeare_char.py``
(a PyTorch re-implementation of nanoGPT for the same setting) on the same machine, one after the
other.

    python benchmarks/bench_shakespeare.py --nanogpt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "gpt3_jax" / "data" / "corpora" / "tinyshakespeare.txt"  # the preset's corpus
TARGET = 1.90


def run_ours(text: Path | None, workdir: Path, extra: list[str]) -> dict:
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
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--text", type=Path, help="a text file (default: the embedded tiny Shakespeare)")
    parser.add_argument(
        "--nanogpt", action="store_true", help="also time the PyTorch nanoGPT re-implementation"
    )
    parser.add_argument("--nanogpt-threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--workdir", type=Path, help="default: a fresh temporary folder")
    parser.add_argument("overrides", nargs="*", help="extra section.key=value overrides for our run")
    args = parser.parse_args()
    text = args.text.resolve() if args.text else None

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp) / "run"
        ours = run_ours(text, workdir, args.overrides)
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "gpt3_jax": ours,
        "passes": ours["val_loss"] <= TARGET,
    }
    if args.nanogpt:
        result["nanogpt_pytorch"] = run_nanogpt(text or SHAKESPEARE, args.nanogpt_threads)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["passes"] else 1)


if __name__ == "__main__":
    main()
