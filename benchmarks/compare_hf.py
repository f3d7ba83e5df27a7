"""gpt3_jax against transformers/PyTorch on one configuration: training and greedy decoding.

    python benchmarks/compare_hf.py            # 6 layers, d 384, 6 heads, context 256, batch 8, vocab 8192
    python benchmarks/compare_hf.py --json     # one JSON line: ratios, fractions, the machine and its load
    python benchmarks/compare_hf.py --smoke    # a tiny configuration, seconds (the test runs this)

Training: the steady-state step of ``training.step.jit_train_step`` (the trainer's own step:
AdamW, global-norm clipping, float32, no remat, all-dense attention) against
``GPT2LMHeadModel`` + ``torch.optim.AdamW`` + ``clip_grad_norm_`` on the same shapes and the same
fixed batch. Each repeat runs ``--steps`` steps of ours, then of theirs, back to back (they share
the machine's load); tokens/s are medians over repeats. ``train_gflops_fraction`` is our model
FLOP/s (``gpt3_jax.info.count``: 6·params + attention per token) over the FLOP/s XLA gets from
one plain matmul of the MLP's shape ([b·t, d] × [d, 4d]), measured in the same run.

Decoding: a random GPT2LMHeadModel of the same configuration, converted to gpt3_jax
(``common.converted``), greedy with a KV cache at batch 1 and 8 (``common.decode_comparison``, as
``bench_decode.py``): ``decode_ratio`` is ours ÷ theirs in tokens/s at batch 1,
``decode_bandwidth_fraction`` our batch-1 decode rate over the memory-bandwidth bound.

The process runs as ``gpt3-jax`` runs: ``gpt3_jax.keep_cpu_buffers()`` keeps XLA:CPU's per-step
working memory mapped (``gpt3_jax.hostmem``). The allocator setting is the process's, so PyTorch
gets it too; ``--plain-host-memory`` leaves the process as it is.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from common import (
    converted,
    decode_comparison,
    gemm_rate,
    load_average,
    machine_info,
    memcpy_bandwidth,
    rounded,
    train_runner,
)

from gpt3_jax.hostmem import keep_cpu_buffers

FULL = dict(n_layer=6, d_model=384, n_head=6, n_ctx=256, vocab_size=8192, batch=8)
SMOKE = dict(n_layer=2, d_model=64, n_head=2, n_ctx=128, vocab_size=256, batch=2)


def ours_trainer(shape: dict, layers: str, lr: float = 6e-4):
    """(run k steps → seconds, model FLOPs per token, the batch's ids) for our jitted train step
    on a fixed batch (``common.train_runner``)."""
    from gpt3_jax.config import load_config
    from gpt3_jax.info import count

    over = [f"model.{k}={shape[k]}" for k in ("n_layer", "d_model", "n_head", "n_ctx", "vocab_size")]
    over += ["model.attention_pattern=[dense]", "model.dtype=float32", "model.remat=none"]
    over += [f"model.scan_layers={layers == 'scan'}", "model.dropout=0.0"]
    over += [f"train.batch_size={shape['batch']}"]
    over += [f"optim.lr={lr}", "optim.warmup_tokens=0", "optim.weight_decay=0.1", "optim.grad_clip=1.0"]
    cfg = load_config(None, over)
    run, ids = train_runner(cfg)  # one device, as the PyTorch side
    return run, count(cfg.model).model_flops_per_token, ids


def hf_config(shape: dict, **dropout: float):
    """The transformers GPT-2 config of ``shape`` (end-of-text id inside the small vocabularies)."""
    from transformers import GPT2Config

    last = shape["vocab_size"] - 1
    return GPT2Config(
        n_layer=shape["n_layer"], n_embd=shape["d_model"], n_head=shape["n_head"], n_positions=shape["n_ctx"],
        vocab_size=shape["vocab_size"], bos_token_id=last, eos_token_id=last, **dropout,
    )  # fmt: skip


def hf_trainer(shape: dict, ids: np.ndarray, lr: float = 6e-4):
    """run k steps → seconds, for GPT2LMHeadModel + AdamW + clipping on the same batch."""
    import time

    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    config = hf_config(shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    x, y = torch.as_tensor(ids[0, :, :-1]), torch.as_tensor(ids[0, :, 1:])

    def run(k: int) -> float:
        t0 = time.perf_counter()
        for _ in range(k):
            logits = model(x).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()
        return time.perf_counter() - t0

    return run


def compare_training(shape: dict, steps: int, repeats: int, layers: str) -> dict:
    ours, flops_per_token, ids = ours_trainer(shape, layers)
    theirs = hf_trainer(shape, ids)
    ours(2), theirs(2)  # compile, warm up
    tokens = steps * shape["batch"] * shape["n_ctx"]
    rates = {"ours": [], "hf": []}
    for _ in range(repeats):
        rates["ours"].append(tokens / ours(steps))
        rates["hf"].append(tokens / theirs(steps))
    mine, hf = float(np.median(rates["ours"])), float(np.median(rates["hf"]))
    m, d = shape["batch"] * shape["n_ctx"], shape["d_model"]
    gemm = gemm_rate(m, d, 4 * d)
    return {
        "ours_tok_s": mine,
        "hf_tok_s": hf,
        "train_ratio": mine / hf,
        "ours_tok_s_each": [round(r, 1) for r in rates["ours"]],
        "hf_tok_s_each": [round(r, 1) for r in rates["hf"]],
        "model_gflops": flops_per_token * mine / 1e9,
        "gemm_gflops": gemm / 1e9,
        "gemm_shape": [m, d, 4 * d],
        "train_gflops_fraction": flops_per_token * mine / gemm,
    }


def compare_decoding(shape: dict, prompt_len: int, new_tokens: int, repeats: int) -> dict:
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(1)
    config = hf_config(shape)
    hf = GPT2LMHeadModel(config).eval()
    lm = converted(hf)
    bandwidth = memcpy_bandwidth()
    rows = [decode_comparison(lm, hf, b, prompt_len, new_tokens, repeats, bandwidth) for b in (1, 8)]
    one, eight = rows
    return {
        "decode_ratio": one["speedup"],
        "decode_ratio_batch8": eight["speedup"],
        "decode_bandwidth_fraction": one["bandwidth_fraction"],
        "decode_tok_s": {"ours": [r["ours_tok_s"] for r in rows], "hf": [r["hf_tok_s"] for r in rows]},
        "decode_same_greedy_tokens": one["same_greedy_tokens"] and eight["same_greedy_tokens"],
        "decode_rows": [rounded(r) for r in rows],
        "memcpy_GB_s": bandwidth / 1e9,
        "decode_layers": "scan" if lm.cfg.model.scan_layers else "per-layer",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--smoke", action="store_true", help="a tiny configuration, one repeat: seconds")
    parser.add_argument("--steps", type=int, default=3, help="train steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--layers", choices=("scan", "per-layer"), default="scan", help="training layout")
    parser.add_argument(
        "--plain-host-memory",
        action="store_true",
        help="leave the process's allocator and JAX's CPU dispatch as they are (default: as gpt3-jax "
        "runs, gpt3_jax.keep_cpu_buffers(), which PyTorch in the same process shares)",
    )
    args = parser.parse_args()
    kept = False if args.plain_host_memory else keep_cpu_buffers()
    shape = SMOKE if args.smoke else FULL
    steps, repeats = (1, 1) if args.smoke else (args.steps, args.repeats)
    new_tokens, prompt_len = (64, 8) if args.smoke else (args.new_tokens, args.prompt_len)

    before, t0 = load_average(), time.perf_counter()
    train = compare_training(shape, steps, repeats, args.layers)
    if not args.json:
        print(json.dumps(rounded(train)), flush=True)
    train_s = time.perf_counter() - t0
    decode = compare_decoding(shape, prompt_len, new_tokens, repeats)
    if not args.json:
        print(json.dumps(rounded(decode)), flush=True)
    summary = rounded(train | decode) | {"config": shape, "train_layers": args.layers}
    summary["cpu_buffers_kept"] = kept
    seconds = {"train": train_s, "all": time.perf_counter() - t0}
    summary |= machine_info(load_average_before=before, seconds=seconds)
    assert all(math.isfinite(summary[k]) for k in ("train_ratio", "decode_ratio"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
