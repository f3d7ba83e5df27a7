"""GPT-3 Small, Medium and XL on one GPU: training MFU per attention implementation, and greedy
decoding against the memory-bandwidth bound. Run it through ``benchmarks/gpu_suite.sh`` (the XLA
flags of launch/xla_gpu_flags.sh, as GPU training uses them).

    bash benchmarks/gpu_suite.sh                    # one H100 or H200: the table
    bash benchmarks/gpu_suite.sh --json             # one JSON line per row, the machine first
    bash benchmarks/gpu_suite.sh --configs xl --impls cudnn --batch xl=16 --micro-batches xl=4
    JAX_PLATFORMS=cpu bash benchmarks/gpu_suite.sh --smoke   # tiny shapes on CPU (the test runs it)

Training: each config's preset (configs/gpt3-*.yaml) at sequence ``--seq`` in bfloat16, once per
``model.attention_impl`` of ``--impls``, stepped by the trainer's own jitted step
(``common.train_runner``) on one device and one fixed random batch. After ``--warmup`` steps
(compile included), ``--repeats`` runs of ``--steps`` steps; tokens/s is their median. Model FLOP/s
is tokens/s × ``gpt3_jax.info.count(cfg).model_flops_per_token`` (the FLOPs the model needs: 6 per
weight, and causal or banded attention; remat's recompute is not counted); MFU is that over the
GPU's dense bf16 peak. Batch, micro-batches and remat per config are ``DEFAULTS`` (set to fit one
80 GB GPU, not yet tuned on one), changed with ``--batch``, ``--micro-batches``, ``--remat``. An
implementation that cannot run there (cudnn off NVIDIA GPUs, splash off TPU, out of memory) gets a
row with the one-line reason.

Decoding: a randomly initialised model of each config, bfloat16 compute, greedy with the KV cache
at batch 1 and 8 (``common.decode_comparison``). The weights are stored in bfloat16 (``--decode-weights
float32``: what ``sampling.load`` gives; XLA may then hoist their cast out of the decode loop, so
what a step reads is not certain). The bound is one step's bytes (every parameter, the KV cache at
half the generation) ÷ a bandwidth: the GPU's HBM bandwidth (datasheet), and beside it a device
copy measured here.

Peaks: dense bf16 tensor-core TFLOP/s and HBM GB/s from NVIDIA's datasheets by device kind
(``--peak-tflops``, ``--hbm-gbps`` override them). A device not in the table (a CPU) is measured
instead, and the header says so: the peak by one matmul of the MLP's shape, the bandwidth by the
device copy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from common import decode_comparison, device_copy_bandwidth, gemm_rate, machine_info, train_runner

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NAMES = ("small", "medium", "xl")
# per config: (batch in sequences, micro-batches, remat), sized by estimate for one 80 GB GPU (not
# yet run on one). save_dots keeps the matmul outputs and recomputes attention, so the masked
# reference's T×T scores are not kept for the backward pass either.
DEFAULTS = {"small": (16, 1, "save_dots"), "medium": (16, 1, "save_dots"), "xl": (8, 2, "save_dots")}
# a substring of jax's device_kind (most specific first) → dense bf16 TFLOP/s, HBM GB/s (datasheets)
GPUS = (
    ("H100 PCIe", 756.0, 2000.0),
    ("H200", 989.4, 4800.0),
    ("H100", 989.4, 3350.0),  # SXM ("NVIDIA H100 80GB HBM3")
)
# --smoke: every config at this tiny shape, two sequences per micro-batch
SMOKE = [
    "model.n_layer=2", "model.d_model=64", "model.n_head=4", "model.n_ctx=64",
    "model.vocab_size=512", "model.local_window=16",
]  # fmt: skip


def config(name: str, impl: str, args: argparse.Namespace, train: bool = True) -> Any:
    """The preset ``name`` for this suite: bf16, no dropout, ``impl``, and (``train``) its batch."""
    from gpt3_jax.config import load_config

    over = [*(SMOKE if args.smoke else [f"model.n_ctx={args.seq}"])]
    over += ["model.dtype=bfloat16", "model.dropout=0.0", f"model.attention_impl={impl}"]
    if train:
        batch, micro, remat = args.train[name]
        over += [f"train.batch_size={batch}", f"train.micro_batches={micro}", f"model.remat={remat}"]
    else:
        import jax

        from gpt3_jax.sampling.api import scan_layers_for

        over += [f"model.scan_layers={scan_layers_for(jax.default_backend())}"]
    return load_config(CONFIGS / f"gpt3-{name}.yaml", over)


def reason(exc: Exception) -> str:
    """An exception as one short line."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def train_row(name: str, impl: str, args: argparse.Namespace, peak: float) -> dict:
    """Steady-state training speed of config ``name`` with attention ``impl``."""
    import numpy as np

    from gpt3_jax.info import count

    t0 = time.perf_counter()
    cfg = config(name, impl, args)
    row: dict[str, Any] = {"kind": "train", "config": name, "attention": impl}
    row |= {"batch": cfg.train.batch_size, "micro_batches": cfg.train.micro_batches}
    row |= {"remat": cfg.model.remat, "seq": cfg.model.n_ctx}
    try:
        run, _ = train_runner(cfg)
        run(args.warmup)  # compile, warm up
        tokens = args.steps * cfg.train.batch_size * cfg.model.n_ctx
        rates = [tokens / run(args.steps) for _ in range(args.repeats)]
        del run  # free the train state before the next row
    except Exception as exc:  # one row with the reason, not the end of the suite
        return row | {"error": reason(exc), "wall_s": time.perf_counter() - t0}
    tok_s = float(np.median(rates))
    flops = count(cfg.model).model_flops_per_token * tok_s
    row |= {"tokens_s": tok_s, "tflops": flops / 1e12, "mfu": flops / peak}
    return row | {"tokens_s_each": [round(r, 1) for r in rates], "wall_s": time.perf_counter() - t0}


def random_model(cfg: Any, dtype: str) -> Any:
    """A ``LanguageModel`` of ``cfg`` with freshly initialised weights (no checkpoint), stored in
    ``dtype``."""
    import jax
    from flax import nnx

    from gpt3_jax.model import GPT, abstract_gpt
    from gpt3_jax.sampling import LanguageModel

    def init() -> nnx.State:
        params = nnx.state(GPT(cfg.model, rngs=nnx.Rngs(cfg.run.seed)))
        return jax.tree.map(lambda a: a.astype(dtype), params)

    graphdef, _ = abstract_gpt(cfg.model)
    return LanguageModel(cfg, nnx.merge(graphdef, jax.jit(init)()))


def decode_rows(name: str, args: argparse.Namespace, hbm: float, copy: float) -> list[dict]:
    """Greedy decode speed of config ``name`` at each of ``--decode-batches``."""
    t0 = time.perf_counter()
    rows = []
    try:
        lm = random_model(config(name, "auto", args, train=False), args.decode_weights)
    except Exception as exc:
        return [{"kind": "decode", "config": name, "error": reason(exc), "wall_s": time.perf_counter() - t0}]
    for b in args.decode_batches:
        row: dict[str, Any] = {"kind": "decode", "config": name, "batch": b}
        try:
            got = decode_comparison(lm, None, b, args.prompt_len, args.new_tokens, args.repeats, hbm)
        except Exception as exc:
            rows.append(row | {"error": reason(exc), "wall_s": time.perf_counter() - t0})
            continue
        row |= {"tokens_s": got["ours_tok_s"], "steps_s": got["ours_steps_s"]}
        row |= {"step_bytes": got["step_bytes"], "bound_steps_s": got["bound_steps_s"]}
        row |= {"hbm_fraction": got["bandwidth_fraction"]}
        row |= {"copy_fraction": got["ours_steps_s"] * got["step_bytes"] / copy}
        rows.append(row | {"steps_s_each": got["ours_steps_s_each"], "wall_s": time.perf_counter() - t0})
        t0 = time.perf_counter()
    return rows


def peaks(args: argparse.Namespace, copy: float) -> dict[str, Any]:
    """Peak bf16 FLOP/s and memory bandwidth, each with where it came from."""
    import jax
    import jax.numpy as jnp

    kind = jax.devices()[0].device_kind
    sheet = next(((k, f, b) for k, f, b in GPUS if k in kind), None)
    out: dict[str, Any] = {}
    if args.peak_tflops:
        out |= {"peak_flops": args.peak_tflops * 1e12, "peak_source": "--peak-tflops"}
    elif sheet:
        out |= {"peak_flops": sheet[1] * 1e12, "peak_source": f"datasheet: {sheet[0]}, dense bf16"}
    else:
        m = config(args.configs[0], "xla", args)
        shape = (m.train.batch_size // m.train.micro_batches * m.model.n_ctx, m.model.d_model, m.model.d_ff)
        out["peak_flops"] = gemm_rate(*shape, dtype=jnp.bfloat16)
        out["peak_source"] = f"measured: one bf16 matmul {list(shape)} (no datasheet entry for {kind!r})"
    if args.hbm_gbps:
        out |= {"hbm_bytes_s": args.hbm_gbps * 1e9, "hbm_source": "--hbm-gbps"}
    elif sheet:
        out |= {"hbm_bytes_s": sheet[2] * 1e9, "hbm_source": f"datasheet: {sheet[0]}"}
    else:
        out |= {"hbm_bytes_s": copy, "hbm_source": f"measured device copy (no datasheet entry for {kind!r})"}
    return out


def pairs(kind: type) -> Any:
    """argparse type: ``NAME=VALUE`` with NAME a config."""

    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        if not sep or name not in NAMES:
            raise argparse.ArgumentTypeError(f"{text!r}: give CONFIG=VALUE, CONFIG one of {', '.join(NAMES)}")
        return name, kind(value)

    return parse


def parse_args() -> argparse.Namespace:
    from gpt3_jax.config import ATTENTION_IMPLS, REMAT_POLICIES

    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few steps: a CPU check")
    p.add_argument("--json", action="store_true", help="one JSON line per row instead of the table")
    p.add_argument("--configs", nargs="+", choices=NAMES, default=list(NAMES))
    p.add_argument("--impls", nargs="+", choices=ATTENTION_IMPLS, default=["xla", "blockwise", "cudnn"])
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", nargs="+", type=pairs(int), default=[], metavar="CONFIG=N")
    p.add_argument("--micro-batches", nargs="+", type=pairs(int), default=[], metavar="CONFIG=N")
    p.add_argument("--remat", nargs="+", type=pairs(str), default=[], metavar="CONFIG=POLICY")
    p.add_argument("--warmup", type=int, default=2, help="train steps before timing (compile included)")
    p.add_argument("--steps", type=int, default=3, help="train steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--decode-weights", choices=("bfloat16", "float32"), default="bfloat16",
                   help="the weights' dtype in decoding (float32: what sampling.load gives)")  # fmt: skip
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak bf16 TFLOP/s (default: by device)")
    p.add_argument("--hbm-gbps", type=float, default=0.0, help="memory GB/s (default: by device)")
    p.add_argument("--copy-mb", type=int, default=1024, help="array size of the measured device copy")
    args = p.parse_args()
    if args.smoke:
        args.warmup, args.steps, args.repeats = 1, 1, 2
        args.prompt_len, args.new_tokens, args.copy_mb = 8, 64, 64
    batch, micro, remat = dict(args.batch), dict(args.micro_batches), dict(args.remat)
    args.train = {}
    for name, (b, m, r) in DEFAULTS.items():
        m = micro.get(name, m)
        args.train[name] = (batch.get(name, 2 * m if args.smoke else b), m, remat.get(name, r))
        if args.train[name][2] not in REMAT_POLICIES:
            p.error(f"--remat {name}={args.train[name][2]}: use one of {', '.join(REMAT_POLICIES)}")
    return args


# the table's columns: (heading, width, format of the row's value); a row with an error prints the
# columns that name it and then the reason
TRAIN_COLUMNS = (
    ("config", -7, "config"), ("attention", -10, "attention"), ("batch", 5, "batch"),
    ("micro", 5, "micro_batches"), ("remat", -9, "remat"), ("seq", 5, "seq"),
    ("tokens/s", 10, "tokens_s:.1f"), ("TFLOP/s", 9, "tflops:.4g"), ("MFU %", 7, "mfu:%"),
    ("wall s", 7, "wall_s:.1f"),
)  # fmt: skip
DECODE_COLUMNS = (
    ("config", -7, "config"), ("batch", 5, "batch"), ("tokens/s", 10, "tokens_s:.1f"),
    ("steps/s", 9, "steps_s:.1f"), ("MB/step", 9, "step_mb:.1f"), ("bound/s", 9, "bound_steps_s:.1f"),
    ("HBM %", 7, "hbm_fraction:%"), ("copy %", 7, "copy_fraction:%"), ("wall s", 7, "wall_s:.1f"),
)  # fmt: skip
NAMING = 6  # train columns that name a row (decode: 2)


def cell(width: int, text: str) -> str:
    return text.ljust(-width) if width < 0 else text.rjust(width)


def header(columns: tuple) -> str:
    return " ".join(cell(w, title) for title, w, _ in columns)


def line(row: dict) -> str:
    """One table line of a row: its values, or the columns naming it and why it cannot run."""
    columns = TRAIN_COLUMNS if row["kind"] == "train" else DECODE_COLUMNS
    if "error" in row:
        named = [c for c in columns[: NAMING if row["kind"] == "train" else 2] if c[2] in row]
        return " ".join([*(cell(w, str(row[key])) for _, w, key in named), f"cannot run: {row['error']}"])
    values = row | {"step_mb": row.get("step_bytes", 0) / 1e6}
    out = []
    for _, width, spec in columns:
        key, _, fmt = spec.partition(":")
        text = f"{100 * values[key]:.3g}" if fmt == "%" else format(values[key], fmt)
        out.append(cell(width, text))
    return " ".join(out)


def main() -> None:
    import jax

    args = parse_args()
    t0 = time.perf_counter()
    if jax.config.jax_compilation_cache_dir:  # the user's (JAX_COMPILATION_CACHE_DIR): reruns compile less
        suite(args, t0)
        return
    # A cache for this run only: the rows of one config share programs (the state's initialisation).
    with tempfile.TemporaryDirectory(prefix="gpu_suite_xla_cache_") as cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        suite(args, t0)


def suite(args: argparse.Namespace, t0: float) -> None:
    """Measure and print every row."""
    say = (lambda text: None) if args.json else print  # the table's headers and notes

    def emit(row: dict) -> None:
        print(json.dumps(row) if args.json else line(row), flush=True)

    copy = device_copy_bandwidth(args.copy_mb)
    machine = machine_info(copy_GB_s=round(copy / 1e9, 2), xla_flags=os.environ.get("XLA_FLAGS", ""))
    machine |= peaks(args, copy)
    if args.json:
        emit({"kind": "machine", **machine})
    say(f"gpt3_jax GPU suite: {machine['device']} ({machine['backend']}), jax {machine['jax']}, "
        f"{machine['date']}, load {machine['load_average']}")  # fmt: skip
    say(f"peak:      {machine['peak_flops'] / 1e12:.4g} TFLOP/s ({machine['peak_source']})")
    say(f"bandwidth: {machine['hbm_bytes_s'] / 1e9:.4g} GB/s ({machine['hbm_source']}); "
        f"device copy measured {copy / 1e9:.4g} GB/s")  # fmt: skip
    say(f"XLA_FLAGS: {machine['xla_flags'] or '(none)'}")
    say(f"\ntrain: bfloat16, one device; median of {args.repeats} × {args.steps} steps after {args.warmup}")
    say(header(TRAIN_COLUMNS))
    for name in args.configs:
        for impl in args.impls:
            emit(train_row(name, impl, args, machine["peak_flops"]))
    say(f"\ndecode: greedy, KV cache, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"{args.decode_weights} weights, bfloat16 compute; bound = step bytes ÷ bandwidth")  # fmt: skip
    say(header(DECODE_COLUMNS))
    for name in args.configs:
        for row in decode_rows(name, args, machine["hbm_bytes_s"], copy):
            emit(row)
    seconds = time.perf_counter() - t0
    if args.json:
        emit({"kind": "total", "seconds": seconds})
    say(f"\ntotal {seconds:.0f} s")


if __name__ == "__main__":
    main()
