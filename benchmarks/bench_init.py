"""The start-up cost of a fresh run's train state: ``init_state``'s compile and run, with XLA's
default options and with ``training.state.init_compiler_options`` (what ``init_state`` uses), side
by side. Each timing runs in its own process (nothing is cached between them); the two option
sets alternate, ``--repeats`` times per config, and each figure is the median.

    python benchmarks/bench_init.py [CONFIG ...] [--repeats 3] [--json]
    python benchmarks/bench_init.py --smoke    # configs/tiny.yaml once each (the test runs this)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import alternating, child_value, load_average, machine_info, print_table

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("configs/shakespeare-char.yaml", "configs/tiny.yaml", "configs/gpt3-small.yaml")


def init_seconds(config: str, options: str) -> float:
    """Lower, compile and run the initialisation of ``config``: ``options`` 'xla' (XLA's defaults)
    or 'ours' (``init_compiler_options``). Seconds, the result waited for."""
    from gpt3_jax.hostmem import keep_cpu_buffers

    keep_cpu_buffers()  # as the train command
    import jax

    from gpt3_jax.config import load_config
    from gpt3_jax.training.setup import setup
    from gpt3_jax.training.state import init_compiler_options, make_init

    cfg = load_config(ROOT / config)
    s = setup(cfg, jax.devices()[:1])
    opts = init_compiler_options(jax.devices()[0].platform) if options == "ours" else {}
    with jax.set_mesh(s.mesh):
        t0 = time.perf_counter()
        lowered = jax.jit(make_init(cfg, s.tx), out_shardings=s.shardings).lower(None)
        jax.block_until_ready(lowered.compile(compiler_options=opts)(None))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("configs", nargs="*", help=f"config files (default: {' '.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--repeats", type=int, default=3, help="processes per figure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--smoke", action="store_true", help="configs/tiny.yaml, once each")
    parser.add_argument("--worker", choices=("xla", "ours"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # a child: print its seconds and nothing else on stdout
        print(init_seconds(args.configs[0], args.worker))
        return

    configs = ["configs/tiny.yaml"] if args.smoke else args.configs or list(DEFAULT_CONFIGS)
    repeats = 1 if args.smoke else args.repeats
    for config in configs:
        if not (ROOT / config).is_file():
            parser.error(f"{config}: no such config file (paths are relative to the repository root)")
    start_load = load_average()
    row: dict = {}
    for config in configs:
        runs = alternating(
            lambda options, config=config: child_value(
                [sys.executable, __file__, "--worker", options, config], ROOT
            ),
            ["xla", "ours"],
            repeats,
        )
        name = Path(config).stem
        xla, ours = statistics.median(runs["xla"]), statistics.median(runs["ours"])
        row |= {f"{name}_xla_s": xla, f"{name}_ours_s": ours, f"{name}_speedup": xla / ours}
        row |= {f"{name}_{k}_runs": [round(t, 3) for t in v] for k, v in runs.items()}
    import jax  # noqa: F401  (machine_info names its version)

    row["machine"] = machine_info(load_average_at_start=start_load)
    lines = []
    for config in configs:
        n = Path(config).stem
        lines.append(
            [
                f"`{config}`",
                f"{row[f'{n}_xla_s']:.2f}",
                f"{row[f'{n}_ours_s']:.2f}",
                f"{row[f'{n}_speedup']:.2f}",
            ]
        )
    print_table(
        row, args.json, ["config", "XLA's options, s", "`init_compiler_options`, s", "speed-up"], lines
    )


if __name__ == "__main__":
    main()
