"""The masked reference's softmax form: ``model.attention.attend`` (hidden logits -inf, the
division applied to the [t, h] output after the product with v, so the weights are the only
[t, s] value the backward keeps) against the textbook form it replaced on 2026-12-07
(probabilities, a second mask, then the product with v). Forward + backward of each, jitted, at
the shapes of the shakespeare-char preset, compare_hf and a longer sequence; alternating, medians;
and XLA's temporary memory for each.

    python benchmarks/bench_softmax.py [--repeats 7] [--json]
    python benchmarks/bench_softmax.py --smoke    # one small shape, 2 repeats (the test runs this)
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import load_average, machine_info, print_table

SHAPES = {"preset": (12, 4, 64, 32), "compare_hf": (8, 6, 256, 64), "t1024": (1, 12, 1024, 64)}
SMOKE = {"smoke": (2, 2, 32, 16)}


def textbook(q, k, v, mask):  # noqa: ANN001, ANN201 - arrays
    """Softmax probabilities (hidden logits at float32's minimum), masked again, times v."""
    import jax
    import jax.numpy as jnp

    logits = jnp.einsum("...th,...sh->...ts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    probs = jax.nn.softmax(jnp.where(mask, logits, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("...ts,...sh->...th", jnp.where(mask, probs, 0.0).astype(v.dtype), v)


def measure(shape: tuple[int, ...], repeats: int, steps: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    from gpt3_jax.model.attention import attend

    b, n, t, h = shape
    q, k, v, cot = (jax.random.normal(jax.random.key(i), shape) for i in range(4))
    pos = jnp.arange(t)
    mask = (pos[None, :] <= pos[:, None])[None, None]
    forms = {"attend": attend, "textbook": textbook}
    fns = {
        name: jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v, mask) * cot), argnums=(0, 1, 2)))
        for name, f in forms.items()
    }
    row: dict[str, float] = {}
    for name, fn in fns.items():
        row[f"{name}_temp_mib"] = fn.lower(q, k, v).compile().memory_analysis().temp_size_in_bytes / 2**20
        jax.block_until_ready(fn(q, k, v))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():  # alternating: the machine's drift hits both
            t0 = time.perf_counter()
            for _ in range(steps):
                out = fn(q, k, v)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    row |= {f"{name}_ms": statistics.median(ts) for name, ts in times.items()}
    row["speedup"] = row["textbook_ms"] / row["attend_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--smoke", action="store_true", help="one small shape, 2 repeats")
    args = parser.parse_args()
    from gpt3_jax.hostmem import keep_cpu_buffers

    keep_cpu_buffers()
    shapes, repeats = (SMOKE, 2) if args.smoke else (SHAPES, args.repeats)
    start_load = load_average()
    rows = {name: measure(shape, repeats, 20 if shape[2] <= 256 else 5) for name, shape in shapes.items()}
    row = {f"{name}_{k}": v for name, r in rows.items() for k, v in r.items()}
    row["machine"] = machine_info(load_average_at_start=start_load)
    lines = []
    for name, r in rows.items():
        times = [f"{r['attend_ms']:.2f}", f"{r['textbook_ms']:.2f}", f"{r['speedup']:.2f}"]
        lines.append(
            [
                f"{name} {list(shapes[name])}",
                *times,
                f"{r['attend_temp_mib']:.1f}",
                f"{r['textbook_temp_mib']:.1f}",
            ]
        )
    header = [
        "[b, n, t, h]",
        "`attend`, ms",
        "textbook, ms",
        "speed-up",
        "`attend` temp, MiB",
        "textbook temp, MiB",
    ]
    print_table(row, args.json, header, lines)


if __name__ == "__main__":
    main()
