"""Data pipeline throughput next to what a train step consumes.

    python benchmarks/bench_data.py                       # demo shape: 16 × 128 tokens, 0.45 s/step
    python benchmarks/bench_data.py --batch-size 16 --seq-len 128 --step-time 0.45 --workers 0 2

Measures, on this machine:
- training batches: ``train_iterator`` over a prepared stream (``--data DIR``, or a synthetic one of
  ``--tokens`` random ids), for each ``--workers`` setting: first-batch latency and steady tokens/s;
- preparation (``--prepare``): tokenizer training and tokenization of the embedded corpus, as
  ``gpt3-jax train`` does before the demo's first step.

"needed" is what training consumes: batch_size × seq_len tokens every ``--step-time`` seconds (the
demo config's header states ~0.45 s per step on a 2-core CPU; measure yours with ``gpt3-jax train``).
The issue's goal is a pipeline ≥ 10× faster than that.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_prepared(folder: Path, n_tokens: int, vocab: int):
    """A prepared folder of random ids, with a tiny tokenizer (the pipeline never decodes)."""
    import json

    from gpt3_jax.data import PreparedData, train_tokenizer
    from gpt3_jax.data.prepared import FORMAT

    tok = train_tokenizer(None, 100, folder / "tok", "char", lines=["abc def ghi"], progress=False)
    ids = np.random.default_rng(0).integers(0, vocab, n_tokens, dtype=np.uint16)
    ids.tofile(folder / "tokens_00000.bin")
    meta = {
        "format": FORMAT,
        "dtype": "uint16",
        "n_tokens": n_tokens,
        "n_train_tokens": n_tokens,
        "n_val_tokens": 0,
        "tokenizer": {"sha256": tok.checksum},
        "shards": [{"file": "tokens_00000.bin", "tokens": n_tokens}],
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    return PreparedData.load(folder, tok)


def bench_iterator(data, batch_size: int, seq_len: int, workers: int, seconds: float) -> tuple[float, float]:
    """(seconds to the first batch, steady tokens/s)."""
    from gpt3_jax.data import train_iterator

    start = time.perf_counter()
    it = train_iterator(data, batch_size=batch_size, seq_len=seq_len, seed=0, workers=workers, prefetch=4)
    try:
        next(it)
        first = time.perf_counter() - start
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            next(it)
            n += 1
        return first, n * batch_size * seq_len / (time.perf_counter() - start)
    finally:
        it.close()


def bench_prepare(max_bytes: int, vocab: int, folder: Path) -> list[tuple[str, float, str]]:
    from gpt3_jax.data import corpus_files, prepare_data, train_tokenizer

    files = corpus_files("stdlib", max_bytes)
    n_bytes = sum(f.size for f in files)
    start = time.perf_counter()
    tok = train_tokenizer(files, vocab, folder / "tok", progress=False)
    t_tok = time.perf_counter() - start
    start = time.perf_counter()
    data = prepare_data(files, tok, folder / "prep", val_fraction=0.05, progress=False)
    t_prep = time.perf_counter() - start
    n = data.meta["n_tokens"]
    return [
        (
            f"train BPE tokenizer, vocab {vocab}, on {n_bytes / 1e6:.1f} MB",
            t_tok,
            f"{n_bytes / t_tok / 1e6:.1f} MB/s",
        ),
        (f"tokenize + write {n / 1e6:.2f}M tokens", t_prep, f"{n / t_prep / 1e6:.2f}M tokens/s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16, help="global batch, sequences (demo: 16)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (demo: 128)")
    parser.add_argument("--step-time", type=float, default=0.45, help="seconds per train step (demo: ~0.45)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="grain worker settings to try")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per setting")
    parser.add_argument("--data", help="a prepared folder (default: a synthetic stream)")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="synthetic stream length")
    parser.add_argument("--prepare", action="store_true", help="also time tokenizer training and preparation")
    parser.add_argument(
        "--corpus-bytes", type=int, default=4_000_000, help="--prepare: corpus size (demo: 4 MB)"
    )
    parser.add_argument("--vocab", type=int, default=2048, help="--prepare: tokenizer size (demo: 2048)")
    args = parser.parse_args()

    from gpt3_jax.data import PreparedData

    needed = args.batch_size * args.seq_len / args.step_time
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    step = f"{args.batch_size} × {args.seq_len} tokens every {args.step_time} s"
    print(f"train step: {step} → needs {needed:,.0f} tokens/s")
    with tempfile.TemporaryDirectory() as tmp:
        data = PreparedData.load(args.data) if args.data else synthetic_prepared(Path(tmp), args.tokens, 2048)
        print("\n| workers | first batch (s) | tokens/s | batches/s | × needed |\n|---|---|---|---|---|")
        for workers in args.workers:
            first, rate = bench_iterator(data, args.batch_size, args.seq_len, workers, args.seconds)
            batches = rate / (args.batch_size * args.seq_len)
            print(f"| {workers} | {first:.2f} | {rate:,.0f} | {batches:,.0f} | {rate / needed:,.0f}× |")
        if args.prepare:
            print("\n| preparation step | seconds | rate |\n|---|---|---|")
            for name, seconds, rate in bench_prepare(args.corpus_bytes, args.vocab, Path(tmp)):
                print(f"| {name} | {seconds:.1f} | {rate} |")


if __name__ == "__main__":
    main()
