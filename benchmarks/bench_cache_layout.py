"""Why the KV cache is kept in rows [b·n, s, h]: copies XLA inserts into a decode loop.

    python benchmarks/bench_cache_layout.py            # batch 1 and 8, 12 layers, 1024 slots

A ``fori_loop`` of decode steps, each updating 12 layers' key caches at one slot and attending over
them, in two layouts: ``heads`` keeps [b, n, s, h] and attends with b and n as batch axes; ``rows``
keeps [b·n, s, h] and attends with one batch axis, reading the cache exactly as stored. For each it
prints the copies in the compiled loop body (``copy`` ops of cache-sized arrays) and the time per
step. On XLA:CPU at batch 1 the [b, n, s, h] layout gets several full copies of every layer's cache
per step (XLA drops the size-1 batch axis before the product, and copy insertion then cannot update
in place); the rows layout gets none at batch 1 or 8.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import time

import jax
import jax.numpy as jnp


def program(layout: str, b: int, layers: int, n: int, s: int, h: int):
    shape = (b, n, s, h) if layout == "heads" else (b * n, s, h)

    def attend(cache, q, k_new, t):
        if layout == "heads":
            k = jax.lax.dynamic_update_slice(cache, k_new, (0, 0, t, 0))
            p = jax.nn.softmax(jnp.einsum("bnth,bnsh->bnts", q, k), -1)
            return k, jnp.einsum("bnts,bnsh->bnth", p, k)
        k = jax.lax.dynamic_update_slice(cache, k_new.reshape(b * n, 1, h), (0, t, 0))
        p = jax.nn.softmax(jnp.einsum("rth,rsh->rts", q.reshape(b * n, 1, h), k), -1)
        return k, jnp.einsum("rts,rsh->rth", p, k).reshape(b, n, 1, h)

    @jax.jit
    def run(caches, x):
        def step(i, carry):
            caches, x = carry
            new = []
            for c in caches:
                c, y = attend(c, x, x * 0.5, i)
                x = x + y
                new.append(c)
            return tuple(new), x

        return jax.lax.fori_loop(0, 64, step, (caches, x))

    return run, tuple(jnp.zeros(shape) for _ in range(layers)), jnp.ones((b, n, 1, h))


def body_copies(hlo: str) -> dict[str, int]:
    bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo))
    counts: collections.Counter = collections.Counter()
    for comp in re.split(r"\n(?=%?\S+ [^\n]*\{\n)", hlo):
        if comp.split(" ", 1)[0].lstrip("%") in bodies:
            counts.update(m.group(1) for m in re.finditer(r"= (f32\[[\d,]+\])\S* copy\(", comp))
    return dict(counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--slots", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for b in args.batches:
        for layout in ("heads", "rows"):
            run, caches, x = program(layout, b, args.layers, 12, args.slots, 64)
            copies = body_copies(run.lower(caches, x).compile().as_text())
            jax.block_until_ready(run(caches, x))
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                out = run(caches, x)
            jax.block_until_ready(out)
            ms = (time.perf_counter() - t0) / args.repeats / 64 * 1e3
            row = {"layout": layout, "batch": b, "copies_in_loop_body": copies, "ms_per_step": round(ms, 3)}
            print(json.dumps(row), flush=True)
    print(json.dumps({"jax": jax.__version__, "load_average": [round(v, 2) for v in os.getloadavg()]}))


if __name__ == "__main__":
    main()
