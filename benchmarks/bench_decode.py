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

from common import converted, decode_comparison, machine_info, memcpy_bandwidth, rounded


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

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=args.n_layer)).eval()
    lm = converted(hf, {"auto": None, "scan": True, "per-layer": False}[args.layers])
    bandwidth = memcpy_bandwidth()
    for b in args.batches:
        row = decode_comparison(
            lm, None if args.skip_hf else hf, b, args.prompt_len, args.new_tokens, args.repeats, bandwidth
        )
        print(json.dumps(rounded(row)), flush=True)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(lm.model, nnx.Param)))
    layers = "scan" if lm.cfg.model.scan_layers else "per-layer"
    print(json.dumps(machine_info(memcpy_GB_s=round(bandwidth / 1e9, 2), params=n_params, layers=layers)))


if __name__ == "__main__":
    main()
