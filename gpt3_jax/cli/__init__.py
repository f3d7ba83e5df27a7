"""``gpt3-jax``: one command-line tool for every job.

Each subcommand lives in its own module here (``train.py``, ``sample.py`` …) with
``add_parser(subparsers)`` and ``run(args) -> int``. Modules import JAX and friends inside
``run`` so that ``gpt3-jax --help`` is instant. A ``UserError`` anywhere becomes one line on
stderr and exit code 2, and so does any other exception (``--debug`` prints the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

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
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def _add_debug(parser: argparse.ArgumentParser, top: bool) -> None:
    """``--debug`` on the tool and on every (sub)subcommand, so it may come anywhere before or after
    the command. Below the top its default is suppressed, so a later parser never resets it."""
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="on an error, print the full traceback (default: one line)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_debug(child, top=False)


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
    _add_debug(parser, top=True)
    return parser


def one_line(exc: BaseException) -> str:
    """An exception as one line for stderr: its message's first non-empty line (the rest of a long
    message, and the traceback, are for ``--debug``)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Bad input (``UserError``) is one line ``error: ...`` on stderr and exit code
    2; so is any other exception, named by its type, with a pointer to ``--debug``, which prints the
    traceback as well. Divergence (3) and SIGINT (130) keep their own codes.

    What libraries print meanwhile about a failure (``_held_library_output``) is shown only once
    the command has succeeded, so that a failing one prints its one line only; ``--debug`` shows it
    as it comes. Run as the program (``argv`` None), a failed command stays quiet until the process
    exits: Orbax's storage threads still report the parts of a failed save as they wind down.
    Run as the program, the commands that run models also keep XLA:CPU's working memory between
    steps (``gpt3_jax.hostmem``); called from Python, the caller's process is left as it is."""
    args = build_parser().parse_args(argv)
    args.own_process = argv is None  # run as the program: process-wide settings are ours to make
    if args.debug:
        return _run(args)
    with _held_library_output(keep_on_failure=argv is None) as held:
        code = _run(args)
        held.ok = code == 0
    return code


def _loop_closed(exc: BaseException | None) -> bool:
    """A callback that found its asyncio loop already closed: what Orbax's storage layer raises
    from its own threads once a failed save has torn its loop down."""
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _Held(logging.Filter):
    """Holds back the error records of the loggers through which libraries report a failure from
    their own threads (Orbax: absl, and asyncio's "Task exception was never retrieved"), and the
    "Event loop is closed" tracebacks those threads raise after it. ``ok`` says the command
    succeeded; ``release()`` then emits the held records."""

    LOGGERS = ("absl", "asyncio")

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.ok = False
        self._unraisablehook = sys.unraisablehook

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.records.append(record)
        return False

    def _unraisable(self, unraisable: Any) -> None:
        if not _loop_closed(unraisable.exc_value):
            self._unraisablehook(unraisable)

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        sys.unraisablehook = self._unraisable

    def remove(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)
        sys.unraisablehook = self._unraisablehook

    def release(self) -> None:
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        self.records.clear()


@contextlib.contextmanager
def _held_library_output(keep_on_failure: bool) -> Iterator[_Held]:
    """While a command runs, Python warnings (torch, jax, orbax) and library error reports
    (``_Held``) are held back. If the command succeeded (the caller sets ``ok``) they are shown
    afterwards; if it failed, its own one line has said what went wrong and they are dropped, and
    with ``keep_on_failure`` the holding stays until the process exits."""
    held = _Held()
    held.install()
    try:
        with warnings.catch_warnings(record=True) as held_warnings:
            yield held
    finally:
        if held.ok or not keep_on_failure:
            held.remove()
        if held.ok:
            for w in held_warnings:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
            held.release()


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gpt3-jax info ... | head`: the reader left; that is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an input we did not foresee: still one line, exit 2
        if args.debug:
            traceback.print_exc()
        hint = "" if args.debug else " (unexpected; rerun with --debug for the traceback)"
        print(f"error: {type(exc).__name__}: {one_line(exc)}{hint}", file=sys.stderr)
        return 2
