"""Where the shakespeare-char gap lies: the train step on one core and on all of them, ours and
PyTorch's, so that a kernel-speed gap (one core) and a parallel-scaling gap (cores added) show
apart.

Ours: the preset's jitted train step (``configs/shakespeare-char.yaml``, ``common.train_runner``,
with ``keep_cpu_buffers`` as ``gpt3-jax train`` has it). Theirs: the PyTorch re-implementation of
nanoGPT in ``nanogpt_shakespeare_char.py`` (forward, backward, clipping, AdamW), on one fixed
batch. Each measurement runs in its own process pinned to the first N cores
(``os.sched_setaffinity``, before JAX or PyTorch starts its threads; PyTorch gets N threads);
ours and theirs alternate, and each figure is the median of ``--repeats`` processes, each the
median of 5 timings of ``--steps`` steps.

    python benchmarks/bench_step_cores.py [--cores 1,2] [--repeats 3] [--steps 50] [--json]
    python benchmarks/bench_step_cores.py --smoke    # one process each, 2 steps (the test runs this)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from common import alternating, child_value, load_average, machine_info, print_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def ours_ms(steps: int) -> float:
    from gpt3_jax.hostmem import keep_cpu_buffers

    keep_cpu_buffers()  # before JAX makes its CPU client, as the train command does
    from common import train_runner

    from gpt3_jax.config import load_config

    run, _ = train_runner(load_config(ROOT / "configs" / "shakespeare-char.yaml"))
    run(3)
    return statistics.median(run(steps) / steps for _ in range(5)) * 1e3


def theirs_ms(steps: int, cores: int) -> float:
    import torch
    from nanogpt_shakespeare_char import BATCH, BLOCK, GPT

    torch.set_num_threads(cores)
    torch.manual_seed(0)
    model = GPT(65)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    x, y = torch.randint(0, 65, (BATCH, BLOCK)), torch.randint(0, 65, (BATCH, BLOCK))

    def step() -> None:
        model(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            step()
        return time.perf_counter() - t0

    timed(3)
    return statistics.median(timed(steps) / steps for _ in range(5)) * 1e3


def measure(which: str, cores: int, steps: int) -> float:
    """One pinned process's step time in ms."""
    cmd = [sys.executable, __file__, "--worker", which, "--cores", str(cores), "--steps", str(steps)]
    return child_value(cmd, HERE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cores", help="core counts, comma-separated (default: 1 and all usable)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per figure (median)")
    parser.add_argument("--steps", type=int, default=50, help="steps per timing")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--smoke", action="store_true", help="one process per figure, 2 steps")
    parser.add_argument("--worker", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:  # a pinned child: print its step time and nothing else on stdout
        n = int(args.cores)
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:n]))
        print(ours_ms(args.steps) if args.worker == "ours" else theirs_ms(args.steps, n))
        return

    if args.smoke:
        args.repeats, args.steps = 1, 2
    usable = len(os.sched_getaffinity(0))
    cores = sorted({int(c) for c in args.cores.split(",")} if args.cores else {1, usable})
    if cores[0] < 1 or cores[-1] > usable:
        parser.error(
            f"--cores {args.cores}: each count must be 1 to {usable}, the cores this process may use"
        )
    start_load = load_average()
    row: dict = {}
    for n in cores:
        runs = alternating(lambda which, n=n: measure(which, n, args.steps), ["ours", "theirs"], args.repeats)
        ours, theirs = statistics.median(runs["ours"]), statistics.median(runs["theirs"])
        row |= {f"ours_ms_{n}": ours, f"theirs_ms_{n}": theirs, f"ratio_{n}": ours / theirs}
        row |= {f"{k}_runs_{n}": [round(t, 2) for t in v] for k, v in runs.items()}
    if len(cores) > 1:
        lo, hi = min(cores), max(cores)
        row["ours_scaling"] = row[f"ours_ms_{lo}"] / row[f"ours_ms_{hi}"]
        row["theirs_scaling"] = row[f"theirs_ms_{lo}"] / row[f"theirs_ms_{hi}"]
    import jax  # noqa: F401  (machine_info names its version)
    import torch  # noqa: F401

    row["machine"] = machine_info(load_average_at_start=start_load)
    lines = [
        [str(n), f"{row[f'ours_ms_{n}']:.1f}", f"{row[f'theirs_ms_{n}']:.1f}", f"{row[f'ratio_{n}']:.2f}"]
        for n in cores
    ]
    print_table(row, args.json, ["cores", "ours, ms/step", "PyTorch, ms/step", "ours / PyTorch"], lines)
    if args.json:
        return
    if len(cores) > 1:
        print(
            f"scaling {min(cores)} → {max(cores)} cores: ours {row['ours_scaling']:.2f}×, "
            f"PyTorch {row['theirs_scaling']:.2f}×"
        )


if __name__ == "__main__":
    main()
