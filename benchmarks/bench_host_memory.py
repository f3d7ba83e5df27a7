"""What ``gpt3_jax.keep_cpu_buffers()`` saves: the trainer's own step with XLA:CPU's per-step
working memory kept mapped (``keep``, what ``gpt3-jax train`` does on a CPU) and left as the
process has it (``plain``, ``--plain-host-memory``), in separate processes (the setting is
process-wide), alternating.

    python benchmarks/bench_host_memory.py            # compare_hf's configuration, 2 rounds
    python benchmarks/bench_host_memory.py --json     # one JSON line
    python benchmarks/bench_host_memory.py --smoke    # a tiny configuration, one round (the test runs this)

Per process: ``compare_hf.ours_trainer``'s step, 2 warm-up steps, then ``--steps`` steps timed;
tokens/s, page faults per step (``ru_minflt``) and kernel (system) CPU ms per step over them.
Reported: medians over rounds per mode, and ``speedup`` = keep ÷ plain tokens/s.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import numpy as np
from common import load_average, machine_info, rounded
from compare_hf import FULL, SMOKE, ours_trainer


def child(mode: str, smoke: bool, steps: int) -> dict:
    """One mode in this process: keep (or not), then the timed steps."""
    from gpt3_jax.hostmem import keep_cpu_buffers

    kept = keep_cpu_buffers() if mode == "keep" else False
    shape = SMOKE if smoke else FULL
    run, _, _ = ours_trainer(shape, "scan")
    run(2)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    seconds = run(steps)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "mode": mode,
        "kept": kept,
        "tok_s": steps * shape["batch"] * shape["n_ctx"] / seconds,
        "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
        "sys_ms_per_step": (r1.ru_stime - r0.ru_stime) * 1e3 / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, one round: seconds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per process")
    parser.add_argument("--child", choices=("keep", "plain"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.smoke, args.steps)))
        return

    before = load_average()
    rows: dict[str, list[dict]] = {"keep": [], "plain": []}
    for _ in range(1 if args.smoke else args.rounds):
        for mode in rows:
            cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)]
            out = subprocess.run(cmd + (["--smoke"] if args.smoke else []), capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {mode} run failed:\n{out.stderr[-2000:]}")
            rows[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            if not args.json:
                print(json.dumps(rounded(rows[mode][-1])), flush=True)
    summary: dict = {"config": SMOKE if args.smoke else FULL, "steps": args.steps}
    for mode, rs in rows.items():
        for key in ("tok_s", "faults_per_step", "sys_ms_per_step"):
            summary[f"{mode}_{key}"] = float(np.median([r[key] for r in rs]))
        summary[f"{mode}_tok_s_each"] = [round(r["tok_s"], 1) for r in rs]
    summary["kept"] = all(r["kept"] for r in rows["keep"])
    summary["speedup"] = summary["keep_tok_s"] / summary["plain_tok_s"]
    print(json.dumps(rounded(summary) | machine_info(load_average_before=before)))


if __name__ == "__main__":
    main()
