"""``gpt3-jax data prepare`` (text → token shards + metadata) and ``gpt3-jax data info``."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare training data")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    prep = sub.add_parser(
        "prepare",
        help="tokenize text files, folders or JSONL(.gz) into token shards",
        description="Tokenize the inputs in parallel, join documents with the end-of-text id and write "
        "memory-mappable token shards plus metadata.json to OUT.",
    )
    prep.add_argument("--input", nargs="+", required=True, metavar="PATH", help="text files, folders, JSONL")
    prep.add_argument(
        "--tokenizer",
        required=True,
        metavar="TOK",
        help="a SentencePiece .model, a Hugging Face tokenizer.json, or a folder holding one",
    )
    prep.add_argument("--out", required=True, metavar="DIR", help="folder for the prepared data")
    prep.add_argument(
        "--val-fraction", type=float, default=0.01, metavar="F", help="tail held out for eval (0.01)"
    )
    prep.add_argument("--workers", type=int, default=None, metavar="N", help="tokenizer processes (CPUs)")
    prep.set_defaults(run=run)
    info = sub.add_parser("info", help="summarise prepared data and check it against a tokenizer")
    info.add_argument("dir", metavar="DIR", help="a folder written by `data prepare`")
    info.add_argument("--tokenizer", metavar="TOK", help="check that the data was made with this tokenizer")
    info.set_defaults(run=run_info)


def run(args: argparse.Namespace) -> int:
    from gpt3_jax.data import list_inputs, load_tokenizer, prepare_data
    from gpt3_jax.data.prepare import summary
    from gpt3_jax.errors import UserError

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers {args.workers}: give at least 1 tokenizer process")
    tokenizer = load_tokenizer(args.tokenizer)
    files = list_inputs(args.input)
    data = prepare_data(
        files,
        tokenizer,
        args.out,
        val_fraction=args.val_fraction,
        workers=args.workers,
        progress=sys.stderr.isatty(),  # a bar in a log or a pipe is noise, and would sit above an error
    )
    print(summary(data))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from gpt3_jax.data import PreparedData
    from gpt3_jax.data.prepare import summary

    data = PreparedData.load(args.dir, args.tokenizer)
    print(summary(data))
    tok = data.tokenizer
    print(f"tokenizer: {tok.path} (sha256 {tok.checksum[:12]}…, {tok.vocab_size} ids)")
    return 0
