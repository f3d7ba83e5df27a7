"""The MLP's GELU differentiated by hand (``model.layers.gelu``) against autodiff of the same
formula (``jax.nn.gelu(approximate=True)``): a stack of MLPs scanned over layers, as the model
scans its blocks, forward + backward, same shapes.

    python benchmarks/bench_gelu.py            # compare_hf's shapes: 6 layers, d 384, batch 8 x 256
    python benchmarks/bench_gelu.py --json     # one JSON line
    python benchmarks/bench_gelu.py --smoke    # a tiny configuration, seconds (the test runs this)

``jax.grad`` of a fixed random projection of the stack's output, jitted, the two forms
alternating in one run, medians over repeats; ``*_temp_mib``: XLA's temporaries for that
gradient (``compile().memory_analysis()``), where the residuals the scan stacks for the backward
live. ``ratio``: autodiff ÷ ours in time (> 1: ours is faster). Both give the same numbers
(``tests/test_model.py::test_gelu_is_jax_tanh_gelu_in_value_and_derivatives``).
"""

from __future__ import annotations

import argparse

import numpy as np
from common import alternating, load_average, machine_info, print_row, timed
from compare_hf import FULL, SMOKE


def losses(shape: dict) -> tuple[dict, tuple]:
    """({form: loss of the scanned MLP stack with that GELU}, its arguments)."""
    import jax

    from gpt3_jax.model.layers import gelu, project

    n, d, b, t = shape["n_layer"], shape["d_model"], shape["batch"], shape["n_ctx"]
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (b, t, d))
    w1 = jax.random.normal(k[1], (n, d, 4 * d)) * 0.02
    w2 = jax.random.normal(k[2], (n, 4 * d, d)) * 0.02
    ct = jax.random.normal(k[3], (b, t, d))

    def stack(act):
        def loss(x, w1, w2):
            def layer(x, w):
                h = act(project("md,df->mf", x, w[0]))
                return x + project("mf,fd->md", h, w[1]), None

            return (jax.lax.scan(layer, x, (w1, w2))[0] * ct).sum()

        return loss

    forms = {"ours": stack(gelu), "autodiff": stack(lambda z: jax.nn.gelu(z, approximate=True))}
    return forms, (x, w1, w2)


def measure(shape: dict, repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per gradient per form (alternating) and each form's temporaries in MiB."""
    import jax

    forms, args = losses(shape)
    calls, temp = {}, {}
    for form, loss in forms.items():
        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
        temp[form] = f.lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**20
        jax.block_until_ready(f(*args))  # compile
        calls[form] = lambda f=f: jax.block_until_ready(f(*args))
    return alternating(lambda form: timed(calls[form]), list(calls), repeats), temp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    repeats = 2 if args.smoke else args.repeats
    before = load_average()
    seconds, temp = measure(shape, repeats)
    med = {f"{form}_ms": 1e3 * float(np.median(s)) for form, s in seconds.items()}
    row = {
        **med,
        **{f"{form}_temp_mib": mib for form, mib in temp.items()},
        "ratio": med["autodiff_ms"] / med["ours_ms"],
        "config": shape,
        **machine_info(load_average_before=before),
    }
    print_row(row, args.json)


if __name__ == "__main__":
    main()
