"""The projections over rows (``model.layers.project``: batch and length merged into one axis)
against the same einsum over [b, t], forward + backward, same shapes.

    python benchmarks/bench_projection.py            # compare_hf's shapes: d 384, batch 8 x 256, vocab 8192
    python benchmarks/bench_projection.py --json     # one JSON line
    python benchmarks/bench_projection.py --smoke    # a tiny configuration, seconds (the test runs this)

Two pieces of the model, each as ``jax.grad`` of a fixed random projection of its output, jitted,
the two forms alternating in one run, medians over repeats:
``mlp``: GPT-2's MLP, x [b, t, d] → GELU(x W1 + b1) W2 + b2 (d → 4d → d);
``unembed``: the tied unembedding x [b, t, d] × wte [v, d] → logits, then ``cross_entropy``.
``*_ratio``: over [b, t] ÷ over rows (> 1: rows are faster). Both forms give the same numbers
(``tests/test_model.py::test_project_is_the_einsum_over_batch_and_length``).
"""

from __future__ import annotations

import argparse

import numpy as np
from common import load_average, machine_info, print_row, timed
from compare_hf import FULL, SMOKE


def pieces(shape: dict) -> dict[str, tuple]:
    """{piece: (loss over rows, loss over [b, t], its arguments)}."""
    import jax
    import jax.numpy as jnp

    from gpt3_jax.model.layers import project
    from gpt3_jax.training.step import cross_entropy

    v, d, b, t = shape["vocab_size"], shape["d_model"], shape["batch"], shape["n_ctx"]
    k = jax.random.split(jax.random.key(0), 6)
    x = jax.random.normal(k[0], (b, t, d))
    w1, w2 = (jax.random.normal(kk, s) * 0.02 for kk, s in ((k[1], (d, 4 * d)), (k[2], (4 * d, d))))
    b1, b2 = jnp.zeros(4 * d), jnp.zeros(d)
    ct = jax.random.normal(k[3], (b, t, d))
    wte = jax.random.normal(k[4], (v, d)) * 0.02
    y = jax.random.randint(k[5], (b, t), 0, v)

    def mlp_rows(x, w1, w2):
        h = jax.nn.gelu(project("md,df->mf", x, w1) + b1, approximate=True)
        return ((project("mf,fd->md", h, w2) + b2) * ct).sum()

    def mlp_bt(x, w1, w2):
        h = jax.nn.gelu(jnp.einsum("btd,df->btf", x, w1) + b1, approximate=True)
        return ((jnp.einsum("btf,fd->btd", h, w2) + b2) * ct).sum()

    def unembed_rows(x, w):
        return cross_entropy(project("md,vd->mv", x, w), y, v)

    def unembed_bt(x, w):
        return cross_entropy(jnp.einsum("btd,vd->btv", x, w), y, v)

    return {"mlp": (mlp_rows, mlp_bt, (x, w1, w2)), "unembed": (unembed_rows, unembed_bt, (x, wte))}


def grad_seconds(shape: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per gradient, per piece and form, the forms alternating."""
    import jax

    calls = {}
    for piece, (rows, bt, args) in pieces(shape).items():
        for form, loss in (("rows", rows), ("bt", bt)):
            f = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
            jax.block_until_ready(f(*args))  # compile
            calls[f"{piece}_{form}"] = lambda f=f, args=args: jax.block_until_ready(f(*args))
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed(call))
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    repeats = 2 if args.smoke else args.repeats
    before = load_average()
    seconds = grad_seconds(shape, repeats)
    med = {f"{name}_ms": 1e3 * float(np.median(s)) for name, s in seconds.items()}
    row = {
        **med,
        **{f"{p}_ratio": med[f"{p}_bt_ms"] / med[f"{p}_rows_ms"] for p in ("mlp", "unembed")},
        "config": shape,
        **machine_info(load_average_before=before),
    }
    print_row(row, args.json)


if __name__ == "__main__":
    main()
