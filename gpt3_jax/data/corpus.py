"""Embedded corpora: text every machine already has, so the quick start needs no download.

``stdlib`` is the Python standard library's own ``.py`` source (about 12 MB in 732 files on CPython 3.11). The
listing is sorted by relative path and leaves out what varies between installs of the same Python
version — ``site-packages``, the platform's ``_sysconfigdata*``/``config-*`` files and the test
suites (Debian and Ubuntu ship those as a separate package) — so machines with the same Python
version get the same corpus, and the same cache key.
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

from gpt3_jax.data.sources import InputFile
from gpt3_jax.errors import UserError

CORPORA = ("stdlib",)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or rel.parts[0].startswith("config-"):
            continue
        if rel.name.startswith("_sysconfigdata") or not path.is_file():
            continue
        found.append((rel.as_posix(), path))
    return sorted(found)


def corpus_files(name: str, max_bytes: int = 0) -> list[InputFile]:
    """The files of embedded corpus ``name``, in a fixed order, the first ones up to ``max_bytes``.

    ``max_bytes`` = 0 takes them all; otherwise whole files are taken while they fit (at least one).
    """
    if name not in CORPORA:
        raise UserError(f"unknown data.corpus {name!r}; use one of {list(CORPORA)} or give data.input paths")
    files: list[InputFile] = []
    total = 0
    for _, path in _stdlib_files():
        size = path.stat().st_size
        if max_bytes and files and total + size > max_bytes:
            continue  # a smaller file later on may still fit
        files.append(InputFile(path, size, jsonl=False, explicit=False))
        total += size
    if not files:
        raise UserError(f"the {name!r} corpus is empty on this machine; give data.input paths instead")
    return files


def corpus_fingerprint(name: str, max_bytes: int, files: list[InputFile]) -> list:
    """Cache identity that is the same on every machine with this Python version (no mtimes)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [
        name,
        platform.python_version(),
        max_bytes,
        [[f.path.relative_to(root).as_posix(), f.size] for f in files],
    ]
