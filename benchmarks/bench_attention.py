"""Attention implementations timed in a model's forward + backward: ``blockwise`` vs the masked
reference ``xla``, for banded (local) and dense layers, over sequence lengths.

    python benchmarks/bench_attention.py                 # T 256 … 2048, window 256, block 512
    python benchmarks/bench_attention.py --json          # one JSON line (the T 2048 target's ratios)
    python benchmarks/bench_attention.py --smoke         # tiny, seconds (the test runs this)

Each row is a GPT of ``--layers`` layers all of one kind (``model.attention_pattern=[local]`` or
``[dense]``) at one length; the timed function is ``jax.value_and_grad`` of the mean next-token
loss (the train step without the optimizer), jitted, on one fixed batch. Per repeat, ``xla`` and
``blockwise`` run back to back (they share the machine's load); times are medians. The target
(issue 11, docs/performance.md "Attention"): at T 2048, W 256, banded layers with ``blockwise``
take ≤ 50 % of ``xla``'s time, dense layers no more than ``xla``. ``auto`` on CPU switches to
``blockwise`` at ``attention.CPU_BLOCKWISE_FROM`` positions (docs/performance.md, "Attention").

``--floor`` also times the same model with attention skipped (each layer's attention output is
its values ``v``, patched in while the function is traced): the work both implementations share,
so ``floor_ratio`` = that time ÷ ``xla``'s is the lowest ratio any attention could reach.
"""

from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import numpy as np
from common import load_average, machine_info, rounded


def loss_and_grad(kind: str, impl: str, t: int, args: argparse.Namespace):
    """A jitted () → (loss, grads) for a GPT of ``kind`` layers at length ``t`` with ``impl``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gpt3_jax.config import load_config
    from gpt3_jax.model import GPT
    from gpt3_jax.training.step import cross_entropy

    over = [
        f"model.n_layer={args.layers}", f"model.d_model={args.d_model}", f"model.n_head={args.heads}",
        f"model.n_ctx={t}", f"model.vocab_size={args.vocab}", f"model.local_window={args.window}",
        f"model.attention_pattern=[{kind}]", f"model.attention_impl={impl}",
        f"model.attention_block={min(args.block, t)}", "model.dtype=float32", "model.scan_layers=false",
    ]  # fmt: skip
    cfg = load_config(None, over).model
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch, t + 1)), jnp.int32)

    def loss(params: nnx.State) -> jax.Array:
        logits, _ = nnx.merge(graphdef, params)(ids[:, :-1])
        return cross_entropy(logits, ids[:, 1:], cfg.vocab_size)

    f = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(f(params))


def without_attention(kind: str, t: int, args: argparse.Namespace):
    """``loss_and_grad`` of the same model with each layer's attention replaced by its values,
    compiled before the patch is undone (the floor of the ratio; ``--floor``)."""
    from gpt3_jax.model import layers

    with mock.patch.object(layers, "attention", lambda q, k, v, *_, **__: v):
        fn = loss_and_grad(kind, "xla", t, args)
        fn()
    return fn


def time_row(kind: str, t: int, args: argparse.Namespace) -> dict:
    fns = {impl: loss_and_grad(kind, impl, t, args) for impl in ("xla", "blockwise")}
    if args.floor:
        fns["none"] = without_attention(kind, t, args)
    for fn in fns.values():
        fn()  # compile
    times: dict[str, list[float]] = {impl: [] for impl in fns}
    for _ in range(args.repeats):
        for impl, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[impl].append(time.perf_counter() - t0)
    xla, block = (float(np.median(times[i])) for i in ("xla", "blockwise"))
    row = {
        "kind": kind, "T": t, "xla_s": xla, "blockwise_s": block, "ratio": block / xla,
        "xla_s_each": [round(x, 4) for x in times["xla"]],
        "blockwise_s_each": [round(x, 4) for x in times["blockwise"]],
    }  # fmt: skip
    if args.floor:
        none = float(np.median(times["none"]))
        row |= {"no_attention_s": none, "floor_ratio": none / xla}
    return row | {"load_average": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--smoke", action="store_true", help="a tiny model at T 64: seconds")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--kinds", nargs="+", choices=("local", "dense"), default=["local", "dense"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--floor", action="store_true", help="also time the model without attention")
    args = parser.parse_args()
    if args.smoke:
        args.lengths, args.layers, args.d_model, args.heads, args.vocab = [64], 1, 32, 2, 64
        args.window, args.block, args.repeats = 32, 32, 1

    before = load_average()
    rows = []
    for t in args.lengths:
        for kind in args.kinds:
            rows.append(time_row(kind, t, args))
            if not args.json:
                print(json.dumps(rounded(rows[-1], 4)), flush=True)
    longest = max(args.lengths)
    ratio = {r["kind"]: r["ratio"] for r in rows if r["T"] == longest}
    summary = {
        "T": longest, "window": args.window, "block": args.block,
        "banded_ratio": ratio.get("local"), "dense_ratio": ratio.get("dense"),
        "banded_target_met": ratio["local"] <= 0.5 if "local" in ratio else None,
        "dense_target_met": ratio["dense"] <= 1.0 if "dense" in ratio else None,
        "model": {"layers": args.layers, "d_model": args.d_model, "heads": args.heads, "batch": args.batch},
        "rows": [rounded(r, 4) for r in rows],
    }  # fmt: skip
    print(json.dumps(rounded(summary, 4) | machine_info(load_average_before=before)))


if __name__ == "__main__":
    main()
