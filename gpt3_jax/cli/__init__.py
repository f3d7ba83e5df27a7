"""``gpt3-jax``: one command-line tool for every job.

Each subcommand lives in its own module here (``train.py``, ``sample.py`` …) with
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import JAX and friends inside
``run`` so that ``gpt3-jax --help`` is instant. A ``UserError`` anywhere becomes one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from gpt3_jax.errors import UserError

COMMANDS = ("train", "sample", "eval", "tokenizer", "data", "plan", "info", "convert")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line; exit code 2 as argparse's own."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gpt3-jax",
        description="GPT-3 in JAX: train, sample, evaluate, prepare data, plan memory, convert weights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gpt3_jax.cli.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet; tests check all exist
            if exc.name != f"gpt3_jax.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
