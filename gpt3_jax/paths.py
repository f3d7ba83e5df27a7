"""Paths: local files and Cloud Storage URLs (``gs://bucket/...``) behind one type.

Every path the package takes — ``run.workdir``, ``--checkpoint``, ``data.input``, tokenizers,
prepared data, ``convert`` folders, metrics — goes through ``as_path``, which returns an
``etils.epath.Path``: pathlib's API for a local path, the same API over ``gcsfs`` (fsspec) for a
``gs://`` URL. Orbax and tensorstore take these paths as they are; credentials are Google's
application-default ones (on a TPU VM: its service account, nothing to set up).

What object storage lacks, and what stands in for it here:

- Atomic renames. ``write_bytes``/``write_text`` are the one atomic write: a reader sees the old
  file or the new one, never part of one (locally: a temporary file, then ``os.replace``; on a
  bucket: one upload, which the store publishes whole). A folder of several files is complete
  when its *marker* exists — a file written last, with ``write_text``, that readers check first
  (prepared data: ``metadata.json``; a checkpoint step: Orbax's own commit file).
- Appends: ``append_text`` rewrites the object on a bucket.
- Memory maps: ``read_range`` reads bytes ``[start, stop)`` of a file, as one ranged request.
- Tools that want a local file or folder: ``local_file`` (downloads a remote one), ``staged_dir``
  (write locally, uploaded on success) — e.g. a profiler trace written to ``gs://``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from etils import epath

Path = epath.Path  # what ``as_path`` returns; pathlib-like, local or remote

PathLike = str | os.PathLike


def as_path(path: PathLike) -> Path:
    """A local path or a ``gs://`` URL as an ``epath.Path`` (relative local paths stay relative)."""
    return path if isinstance(path, Path) else epath.Path(path)


def is_remote(path: PathLike) -> bool:
    """True for a URL (``gs://...``), False for a local path."""
    return "://" in os.fspath(path)


def absolute(path: PathLike) -> Path:
    """A local path made absolute; a URL is already."""
    p = as_path(path)
    return p if is_remote(p) else p.absolute()


def _fs(path: PathLike):  # -> tuple[fsspec.AbstractFileSystem, str]
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(path))


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write a whole file atomically: readers see the old content or the new, never a part."""
    p = as_path(path)
    if is_remote(p):
        p.write_bytes(data)  # one upload: the object appears whole when it completes
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.partial")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def write_text(path: PathLike, text: str) -> None:
    """``write_bytes`` of UTF-8 text."""
    write_bytes(path, text.encode("utf-8"))


def append_text(path: PathLike, text: str) -> None:
    """Add ``text`` at the end of a file (created if missing). An object in a bucket cannot be
    appended to, so there the whole object is written again, atomically."""
    p = as_path(path)
    if is_remote(p):
        write_text(p, (p.read_text() if p.exists() else "") + text)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as f:
        f.write(text)


def read_range(path: PathLike, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of a file: one ranged read, never the whole file."""
    fs, p = _fs(path)
    return fs.cat_file(p, start=start, end=stop)


def version(path: PathLike) -> int | str:
    """What changes when a file's content is replaced: the modification time in nanoseconds, or
    a bucket object's generation (its etag where a store has no generations)."""
    if not is_remote(path):
        return os.stat(path).st_mtime_ns
    fs, p = _fs(path)
    info = fs.info(p)
    generation = info.get("generation")
    return int(generation) if generation else str(info.get("etag") or info.get("mtime"))


def files_under(folder: PathLike) -> list[Path]:
    """Every file below ``folder``, at any depth, sorted by path."""
    root = as_path(folder)
    if not is_remote(root):
        return sorted(as_path(p) for p in pathlib.Path(root).rglob("*") if p.is_file())
    fs, base = _fs(root)
    base = base.rstrip("/")
    return sorted(root / found[len(base) + 1 :] for found in fs.find(base))


def open_binary(path: PathLike) -> BinaryIO:
    """A file opened for reading bytes, with ``peek`` (a remote file's reads are buffered too)."""
    f = as_path(path).open("rb")
    return f if hasattr(f, "peek") else io.BufferedReader(f)  # type: ignore[arg-type]


def remove(path: PathLike) -> None:
    """Delete a file or a folder with everything in it; nothing there is fine."""
    p = as_path(path)
    if p.is_dir():
        p.rmtree()
    elif p.exists():
        p.unlink()


def move(src: PathLike, dst: PathLike) -> None:
    """Rename a file or folder to ``dst`` (which must not exist); in a bucket, which has no
    rename, everything is copied and then deleted."""
    s, d = as_path(src), as_path(dst)
    if not is_remote(s):
        os.rename(s, d)
        return
    fs, source = _fs(s)
    fs.mv(source, _fs(d)[1], recursive=True)


@contextlib.contextmanager
def local_file(path: PathLike) -> Iterator[pathlib.Path]:
    """A local path holding ``path``'s content: the file itself, or a temporary download of a
    remote one (for libraries that only open local files)."""
    if not is_remote(path):
        yield pathlib.Path(path)
        return
    fs, p = _fs(path)
    with tempfile.TemporaryDirectory(prefix="gpt3-jax-") as tmp:
        local = pathlib.Path(tmp) / as_path(path).name
        fs.get_file(p, str(local))
        yield local


@contextlib.contextmanager
def staged_dir(dest: PathLike) -> Iterator[pathlib.Path]:
    """A local folder to write ``dest``'s files into: ``dest`` itself when it is local; otherwise a
    temporary folder whose files are uploaded to ``dest`` when the block ends without an error
    (each file atomically)."""
    if not is_remote(dest):
        local = pathlib.Path(dest)
        local.mkdir(parents=True, exist_ok=True)
        yield local
        return
    fs, remote = _fs(dest)
    with tempfile.TemporaryDirectory(prefix="gpt3-jax-") as tmp:
        yield pathlib.Path(tmp)
        files = sorted(p for p in pathlib.Path(tmp).rglob("*") if p.is_file())
        if files:
            targets = [f"{remote.rstrip('/')}/{p.relative_to(tmp).as_posix()}" for p in files]
            fs.put([str(p) for p in files], targets)
