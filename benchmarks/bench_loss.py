"""The vocabulary mask's cost: ``mask_vocab`` with nothing to mask (it returns the logits) against
one padding column (its select over every logit runs), same shapes.

    python benchmarks/bench_loss.py            # compare_hf's configuration: d 384, vocab 8192, batch 8 x 256
    python benchmarks/bench_loss.py --json     # one JSON line
    python benchmarks/bench_loss.py --smoke    # a tiny configuration, seconds (the test runs this)

``loss_*``: ``jax.grad`` of the tied unembedding and ``training.step.cross_entropy`` alone, jitted,
medians over repeats, the two forms alternating. ``step_*``: the trainer's own step
(``compare_hf.ours_trainer``) at vocabulary v (no padding) against v - 1 (padded to v), tokens/s,
alternating, medians. ``*_ratio``: without the select ÷ with it (> 1: skipping it is faster).
"""

from __future__ import annotations

import argparse

import numpy as np
from common import load_average, machine_info, print_row, timed
from compare_hf import FULL, SMOKE, ours_trainer


def loss_grads(shape: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per gradient of unembedding + loss, per form, alternating."""
    import jax
    import jax.numpy as jnp

    from gpt3_jax.training.step import cross_entropy

    v, d, b, t = shape["vocab_size"], shape["d_model"], shape["batch"], shape["n_ctx"]
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (b, t, d)) * 0.1  # the model's layout ([b, t, d], Embed.unembed)
    w = jax.random.normal(keys[1], (v, d)) * 0.02
    y = jax.random.randint(keys[2], (b, t), 0, v - 1)

    def grad_fn(size: int):
        def loss(x: jax.Array, w: jax.Array) -> jax.Array:
            return cross_entropy(jnp.einsum("btd,vd->btv", x, w), y, size)

        f = jax.jit(jax.grad(loss, argnums=(0, 1)))
        jax.block_until_ready(f(x, w))  # compile
        return lambda: jax.block_until_ready(f(x, w))

    forms = {"no_select": grad_fn(v), "select": grad_fn(v - 1)}
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(repeats):
        for name, f in forms.items():
            seconds[name].append(timed(f))
    return seconds


def step_rates(shape: dict, steps: int, repeats: int) -> dict[str, list[float]]:
    """Tokens/s of the train step at vocabulary v and v - 1 (padded to v), alternating."""
    runs = {
        "no_select": ours_trainer(shape, "scan")[0],
        "select": ours_trainer(dict(shape, vocab_size=shape["vocab_size"] - 1), "scan")[0],
    }
    for run in runs.values():
        run(2)  # compile, warm up
    tokens = steps * shape["batch"] * shape["n_ctx"]
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            rates[name].append(tokens / run(steps))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="train steps per repeat")
    args = parser.parse_args()
    shape = SMOKE if args.smoke else FULL
    repeats = 2 if args.smoke else args.repeats
    before = load_average()
    loss = loss_grads(shape, repeats)
    step = step_rates(shape, args.steps, repeats)
    med = {f"loss_ms_{k}": 1e3 * float(np.median(s)) for k, s in loss.items()}
    med |= {f"step_tok_s_{k}": float(np.median(r)) for k, r in step.items()}
    row = {
        **med,
        "loss_ratio": med["loss_ms_select"] / med["loss_ms_no_select"],
        "step_ratio": med["step_tok_s_no_select"] / med["step_tok_s_select"],
        "step_tok_s_each": {k: [round(r, 1) for r in rates] for k, rates in step.items()},
        "config": shape,
        **machine_info(load_average_before=before),
    }
    print_row(row, args.json)


if __name__ == "__main__":
    main()
