"""Reading training text: plain files, folders of them, JSONL (``text`` field), each optionally gzipped,
on local disk or in a bucket (``gs://``).

A document is one text file or one JSONL record. Big documents arrive in pieces that end at a line
break between two non-space characters, where neither kind of tokenizer merges (SentencePiece never
merges across ``"\\n"``; GPT-2's byte-level BPE joins a break only with whitespace beside it), so
tokenizing the pieces gives the same ids as tokenizing the whole. Bytes that are not UTF-8 become
U+FFFD, one per bad byte, and are counted.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from gpt3_jax import paths
from gpt3_jax.errors import UserError

_PIECE_BYTES = 1 << 20  # big documents are cut into ~1 MiB pieces at line breaks
_SNIFF_BYTES = 8192
_ESCAPED = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape could not decode


@dataclass(frozen=True)
class InputFile:
    path: paths.Path
    size: int  # bytes stored (compressed size for .gz)
    jsonl: bool
    explicit: bool  # named by the user (a binary file is an error) vs found in a folder (skipped)

    @property
    def gz(self) -> bool:
        return self.path.suffix == ".gz"


@dataclass(frozen=True)
class Piece:
    """A run of one document's text. ``end`` marks the document's last piece."""

    text: str
    end: bool
    n_bytes: int  # raw bytes read for it (progress bars)
    n_invalid: int  # bytes that were not UTF-8, replaced by U+FFFD


def _is_jsonl(path: paths.Path) -> bool:
    name = path.name.lower()
    return name.endswith(".jsonl") or name.endswith(".jsonl.gz")


def list_inputs(inputs: Sequence[paths.PathLike | InputFile]) -> list[InputFile]:
    """Expand files and folders (recursively, sorted, hidden entries skipped) into input files."""
    if not inputs:
        raise UserError("no input given; pass text files, folders or JSONL files")
    files: list[InputFile] = []
    for raw in inputs:
        if isinstance(raw, InputFile):  # already listed (an embedded corpus)
            files.append(raw)
            continue
        p = paths.as_path(raw)
        if p.is_file():
            files.append(InputFile(p, p.stat().length, _is_jsonl(p), explicit=True))
        elif p.is_dir():
            found = [
                f
                for f in paths.files_under(p)
                if not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            files += [InputFile(f, f.stat().length, _is_jsonl(f), explicit=False) for f in found]
        else:
            raise UserError(f"input {str(p)!r} not found; pass existing text files, folders or JSONL files")
    if not files:
        raise UserError(f"no files found in {', '.join(map(str, inputs))}; the input is empty")
    return files


def fingerprint(files: Sequence[InputFile]) -> list[list]:
    """What identifies the inputs for caching: absolute path or URL, size, version (modification
    time, or a bucket object's generation)."""
    return [[str(paths.absolute(f.path)), f.size, paths.version(f.path)] for f in files]


@contextlib.contextmanager
def _open(f: InputFile) -> Iterator[BinaryIO]:
    with paths.open_binary(f.path) as raw:
        yield gzip.GzipFile(fileobj=raw, mode="rb") if f.gz else raw  # type: ignore[misc]


def _binary(head: bytes) -> bool:
    return b"\x00" in head


class _Decoder:
    """UTF-8 decoding across chunk boundaries; invalid bytes → U+FFFD, counted."""

    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")

    def __call__(self, raw: bytes, final: bool = False) -> tuple[str, int]:
        text = self._dec.decode(raw, final)
        bad = len(_ESCAPED.findall(text))
        return (_ESCAPED.sub("\ufffd", text) if bad else text), bad


def _text_pieces(f: InputFile, stream: BinaryIO) -> Iterator[Piece]:
    decode = _Decoder()
    pending = ""
    pending_bytes = pending_bad = 0
    while True:
        raw = stream.read(_PIECE_BYTES)
        text, bad = decode(raw, final=not raw)
        checked = max(len(pending) - 1, 0)  # breaks before this were no cut point last time either
        pending += text
        pending_bytes += len(raw)
        pending_bad += bad
        if not raw:
            yield Piece(pending, True, pending_bytes, pending_bad)
            return
        cut = _cut_point(pending, checked)
        if cut:
            yield Piece(pending[:cut], False, pending_bytes, pending_bad)
            pending, pending_bytes, pending_bad = pending[cut:], 0, 0


def _cut_point(text: str, start: int = 0) -> int:
    """Index just past the last ``"a\\nb"`` line break (non-space on both sides) in ``text[start:]``,
    or 0 when there is none."""
    end = len(text) - 1  # the character after the break must be in ``text``
    while (i := text.rfind("\n", start, end)) > 0:
        if not text[i - 1].isspace() and not text[i + 1].isspace():
            return i + 1
        end = i
    return 0


def _jsonl_pieces(f: InputFile, stream: BinaryIO) -> Iterator[Piece]:
    for lineno, raw in enumerate(stream, 1):
        text, bad = _Decoder()(raw, final=True)
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{f.path}:{lineno}: not valid JSON ({exc.msg}); each line must be one object"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{f.path}:{lineno}: each JSONL line needs a string "text" field')
        yield Piece(record["text"], True, len(raw), bad)


def iter_pieces(files: Sequence[InputFile], skipped: list[str] | None = None) -> Iterator[Piece]:
    """Every document of ``files``, in order, as pieces.

    A binary file (a NUL byte in its first 8 KiB) named by the user is an error; one found inside a
    folder is skipped and its path appended to ``skipped``.
    """
    for f in files:
        try:
            with _open(f) as stream:
                head = stream.peek(_SNIFF_BYTES)[:_SNIFF_BYTES] if hasattr(stream, "peek") else b""
                if _binary(head):
                    if f.explicit:
                        raise UserError(f"{f.path} looks binary (it has NUL bytes); pass text or JSONL files")
                    if skipped is not None:
                        skipped.append(str(f.path))
                    continue
                yield from (_jsonl_pieces if f.jsonl else _text_pieces)(f, stream)
        except (gzip.BadGzipFile, EOFError, zlib.error):
            raise UserError(f"{f.path}: not a valid gzip file; fix or remove it") from None
        except OSError as exc:
            raise UserError(f"cannot read {f.path}: {exc.strerror or exc}") from None


def read_texts(
    files: Sequence[InputFile], desc: str = "reading", progress: bool = True, file: TextIO | None = None
) -> Iterator[str]:
    """The text of ``files`` piece by piece, with a progress bar (on ``file``) over the bytes read."""
    from tqdm import tqdm

    total = sum(f.size for f in files)
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, disable=not progress, file=file) as bar:
        for piece in iter_pieces(files):
            bar.update(min(piece.n_bytes, total - bar.n))
            yield piece.text


def batched(pieces: Iterable[Piece], chunk_bytes: int) -> Iterator[list[Piece]]:
    """Group pieces into lists of about ``chunk_bytes`` of text: one unit of parallel work."""
    group: list[Piece] = []
    size = 0
    for piece in pieces:
        group.append(piece)
        size += len(piece.text)
        if size >= chunk_bytes:
            yield group
            group, size = [], 0
    if group:
        yield group
