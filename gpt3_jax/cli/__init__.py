"""``gpt3-jax``: one command-line tool for every job.

Each subcommand lives in its own module here (``train.py``, ``sample.py`` …) with
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import JAX and friends inside
``run`` so that ``gpt3-jax --help`` is instant. A ``UserError`` anywhere becomes one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gpt3_jax.errors import UserError

COMMANDS = ("train", "sample", "eval", "tokenizer", "data", "plan", "info", "convert")


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (exit code 2, as argparse's own), and, in each
    subcommand, overrides allowed after options (``plan CFG --devices 8 mesh.fsdp=8``), which
    plain argparse rejects once its ``nargs="*"`` positional has matched empty before an option."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True  # parse_known_intermixed_args calls back into this method
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

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
    except BrokenPipeError:  # `gpt3-jax info ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
