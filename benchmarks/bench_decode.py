"""Decode speed of the KV-cache sampler vs transformers' ``generate`` on the same GPT-2 weights.

    python benchmarks/bench_decode.py                       # GPT-2 124M shape, batch 1 and 8
    python benchmarks/bench_decode.py --batches 1 --new-tokens 64 --skip-hf
    python benchmarks/bench_decode.py --layers scan         # the stacked layout, scanned

A random GPT-2 124M (``GPT2LMHeadModel(GPT2Config())``) is saved, converted with
``gpt3_jax.convert.from_hf``, saved as a checkpoint and loaded with ``gpt3_jax.sampling.load``
(``--layers``: the layer layout, ``auto`` = what ``load`` picks for the backend), and both models
decode greedily from the same random prompt. Decode
speed is measured as (N - 1) / (T(N) - T(1)), with T(n) the wall time of a generate call producing
n tokens, so prefill, compile and per-call overhead cancel out. On a shared machine the load swings
from second to second, so each repeat times ours and then transformers back to back and the
reported rates are medians over repeats (every repeat's rates are printed too). The memory-bandwidth
bound is the bytes one decode step must read (every parameter, plus the KV cache at half the
generation) divided by a numpy memcpy bandwidth measured here (bytes read + written per second).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np


def memcpy_bandwidth(size_mb: int = 512, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by numpy copying ``size_mb`` MiB; best of ``repeats``."""
    src = np.ones(size_mb * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decode_rate(generate, n: int) -> float:
    """Steps per second of the decode loop alone: (n - 1) / (T(n) - T(1)), one measurement."""
    t1, tn = timed(lambda: generate(1)), timed(lambda: generate(n))
    return (n - 1) / max(tn - t1, 1e-9)


def interleaved_rates(generators: dict, n: int, repeats: int) -> dict[str, list[float]]:
    """Per repeat, every generator's decode rate in turn (so they share the machine's load)."""
    for generate in generators.values():
        generate(1), generate(n)  # compile / warm up both shapes
    rates: dict[str, list[float]] = {name: [] for name in generators}
    for _ in range(repeats):
        for name, generate in generators.items():
            rates[name].append(decode_rate(generate, n))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-hf", action="store_true", help="only our sampler")
    parser.add_argument("--n-layer", type=int, default=12, help="smaller for a quick check")
    parser.add_argument("--layers", choices=("auto", "scan", "per-layer"), default="auto")
    args = parser.parse_args()

    import jax
    import torch
    from flax import nnx
    from transformers import GPT2Config, GPT2LMHeadModel

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.convert import from_hf
    from gpt3_jax.sampling import load

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer)).eval()
    scan = {"auto": None, "scan": True, "per-layer": False}[args.layers]
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(f"{d}/hf")
        cfg, model = from_hf(f"{d}/hf")
        save_params(f"{d}/ckpt", cfg, nnx.state(model, nnx.Param))
        del model
        lm = load(f"{d}/ckpt", scan_layers=scan)
    sampler = lm.sampler  # no end-of-text: every row runs the full budget, like min_new_tokens
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(lm.model, nnx.Param)))
    bandwidth = memcpy_bandwidth()
    rng = np.random.default_rng(0)
    rows = []
    for b in args.batches:
        prompts = rng.integers(0, cfg.model.vocab_size, (b, args.prompt_len))
        generators = {"ours": lambda n, p=prompts: sampler.generate(p.tolist(), n)}
        if not args.skip_hf:
            ids = torch.as_tensor(prompts)

            def hf_generate(n: int, ids=ids) -> torch.Tensor:
                with torch.inference_mode():
                    return hf.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=n,
                        min_new_tokens=n,
                        do_sample=False,
                        pad_token_id=0,
                    )

            generators["hf"] = hf_generate
        rates = interleaved_rates(generators, args.new_tokens, args.repeats)
        ours = float(np.median(rates["ours"]))
        m = cfg.model
        cache = 2 * m.n_layer * b * (args.prompt_len + args.new_tokens // 2) * m.d_model * 4
        bound = bandwidth / (n_params * 4 + cache)
        row = {"batch": b, "ours_tok_s": ours * b, "ours_steps_s": ours, "bound_steps_s": bound}
        row["ours_steps_s_each"] = [round(r, 2) for r in rates["ours"]]
        if not args.skip_hf:
            theirs = float(np.median(rates["hf"]))
            check = sampler.generate(prompts.tolist(), 16).ids
            same = hf_generate(16)[:, args.prompt_len :].tolist() == check
            row |= {"hf_tok_s": theirs * b, "speedup": ours / theirs, "same_greedy_tokens": same}
            row["hf_steps_s_each"] = [round(r, 2) for r in rates["hf"]]
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "memcpy_GB_s": round(bandwidth / 1e9, 2),
                "params": n_params,
                "torch_threads": torch.get_num_threads(),
                "jax": jax.__version__,
                "layers": "scan" if lm.cfg.model.scan_layers else "per-layer",
                "date": time.strftime("%Y-%m-%d"),
                "load_average": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()
