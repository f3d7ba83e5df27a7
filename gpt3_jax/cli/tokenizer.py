"""``gpt3-jax tokenizer train``: a SentencePiece model (BPE by default) from text files."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a SentencePiece tokenizer")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    train = sub.add_parser(
        "train",
        help="train a tokenizer on text files, folders or JSONL(.gz)",
        description="Train a SentencePiece model with byte fallback (BPE/unigram) and an end-of-text "
        "id; writes OUT/tokenizer.model.",
    )
    train.add_argument("--input", nargs="+", required=True, metavar="PATH", help="text files, folders, JSONL")
    train.add_argument(
        "--vocab-size", type=int, required=True, metavar="N", help="ids, special ones included"
    )
    train.add_argument("--out", required=True, metavar="DIR", help="folder for tokenizer.model")
    train.add_argument("--model-type", choices=("bpe", "unigram", "char"), default="bpe", help="default: bpe")
    train.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gpt3_jax.data import train_tokenizer

    tok = train_tokenizer(
        args.input, args.vocab_size, args.out, args.model_type, progress=sys.stderr.isatty()
    )  # bars only on a terminal: in a log or a pipe they are noise, and would sit above an error
    print(f"wrote {tok.path}: {tok.vocab_size} ids ({args.model_type}), end-of-text id {tok.eot_id}")
    return 0
