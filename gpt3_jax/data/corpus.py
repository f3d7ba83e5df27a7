"""Embedded corpora: text every install already has, so the quick start and the tests need no download.

``stdlib`` (the default) is the Python standard library's own ``.py`` source (about 12 MB in 732
files on CPython 3.11). The listing is sorted by relative path and leaves out what varies between
installs of the same Python version — ``site-packages``, the platform's ``_sysconfigdata*``/``config-*``
files and the test suites (Debian and Ubuntu ship those as a separate package) — so machines with
the same Python version get the same corpus, and the same cache key.

``shakespeare`` is tiny Shakespeare (karpathy/char-rnn's ``input.txt``: 1,115,394 characters of
the plays, public domain), shipped with the package in ``gpt3_jax/data/corpora/``; its cache key
holds the file's sha256, so it is the same everywhere.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from pathlib import Path

from gpt3_jax import paths
from gpt3_jax.data.sources import InputFile
from gpt3_jax.errors import UserError

CORPORA = ("stdlib", "shakespeare")
PACKAGED = Path(__file__).resolve().parent / "corpora"  # corpora shipped as package data
SHAKESPEARE = PACKAGED / "tinyshakespeare.txt"
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _root(name: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) if name == "stdlib" else PACKAGED


def _stdlib_files() -> list[Path]:
    root = _root("stdlib")
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.parts[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata") or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return [path for _, path in sorted(found)]


def corpus_files(name: str, max_bytes: int = 0) -> list[InputFile]:
    """The files of embedded corpus ``name``, in a fixed order, the first ones up to ``max_bytes``.

    ``max_bytes`` = 0 takes them all; otherwise whole files are taken while they fit (at least one).
    """
    if name not in CORPORA:
        raise UserError(f"unknown data.corpus {name!r}; use one of {list(CORPORA)} or give data.input paths")
    found = _stdlib_files() if name == "stdlib" else [SHAKESPEARE]
    files: list[InputFile] = []
    total = 0
    for path in found:
        if not path.is_file():
            raise UserError(f"{path} is missing from this install of gpt3_jax; reinstall the package")
        size = path.stat().st_size
        if max_bytes and files and total + size > max_bytes:
            continue  # a smaller file later on may still fit
        files.append(InputFile(paths.as_path(path), size, jsonl=False, explicit=False))
        total += size
    if not files:
        raise UserError(f"the {name!r} corpus is empty on this machine; give data.input paths instead")
    return files


def corpus_fingerprint(name: str, max_bytes: int, files: list[InputFile]) -> list:
    """Cache identity that is the same on every machine (no mtimes): for ``stdlib`` the Python
    version, relative paths and sizes; for a packaged corpus the files' sha256."""
    root = _root(name)
    listing = [[f.path.relative_to(root).as_posix(), f.size] for f in files]
    if name == "stdlib":
        return [name, platform.python_version(), max_bytes, listing]
    digests = [hashlib.sha256(f.path.read_bytes()).hexdigest() for f in files]
    return [name, max_bytes, [[*entry, digest] for entry, digest in zip(listing, digests, strict=True)]]
