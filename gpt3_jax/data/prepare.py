"""Text → token stream on disk (see ``prepared.py`` for the layout), tokenized in parallel.

Documents are joined GPT-3 style: each one is followed by the end-of-text id, with no padding and
no cross-document mask. The main process reads and groups the text; a pool of worker processes
tokenizes the groups; results come back in order, so the stream does not depend on the number of
workers. The shards go straight into the output folder (local or ``gs://``) and ``metadata.json``
is written last: a reader takes the folder as prepared data only once that marker is there, so
it never sees part of a stream (see ``gpt3_jax.paths``).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from gpt3_jax import paths
from gpt3_jax.data.prepared import FORMAT, METADATA, PreparedData
from gpt3_jax.data.sources import InputFile, Piece, batched, iter_pieces
from gpt3_jax.data.tokenizer import Tokenizer, token_dtype
from gpt3_jax.errors import UserError

SHARD_TOKENS = 1 << 28  # 256 Mi tokens: 512 MiB of uint16 per shard
_CHUNK_BYTES = 1 << 20  # text per unit of parallel work
_OUR_FILES = re.compile(r"tokens_\d{5}\.bin|metadata\.json|tokenizer\.(model|json)")  # what we write


def _tokenize(tokenizer: Tokenizer, pieces: list[Piece]) -> tuple[np.ndarray, int, int, int]:
    """A group of pieces → (uint32 ids with end-of-text after each finished document, bytes read,
    invalid bytes, documents)."""
    ids: list[int] = []
    docs = 0
    for piece in pieces:
        ids.extend(tokenizer.encode(piece.text))
        if piece.end:
            ids.append(tokenizer.eot_id)
            docs += 1
    n_bytes = sum(p.n_bytes for p in pieces)
    return np.asarray(ids, np.uint32), n_bytes, sum(p.n_invalid for p in pieces), docs


# Worker processes only (never the caller's): the tokenizer each spawned worker builds once, in
# its pool initializer, instead of unpickling (re-loading) it with every group of pieces.
_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _tokenize_in_worker(pieces: list[Piece]) -> tuple[np.ndarray, int, int, int]:
    assert _worker_tokenizer is not None, "called outside a tokenizing worker"
    return _tokenize(_worker_tokenizer, pieces)


def _tokenized(
    groups: Iterator[list[Piece]], tokenizer: Tokenizer, workers: int
) -> Iterator[tuple[np.ndarray, int, int, int]]:
    if workers <= 1:
        yield from (_tokenize(tokenizer, g) for g in groups)
        return
    # spawn, not fork: the caller may be a JAX process with threads running, which fork would copy
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        yield from pool.imap(_tokenize_in_worker, groups, chunksize=1)


class _ShardWriter:
    def __init__(self, folder: paths.Path, dtype: np.dtype, shard_tokens: int):
        self.folder, self.dtype, self.shard_tokens = folder, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._file = None

    def write(self, ids: np.ndarray) -> None:
        ids = ids.astype(self.dtype)
        while len(ids):
            if self._file is None or self.shards[-1]["tokens"] == self.shard_tokens:
                self._next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, ids = ids[:room], ids[room:]
            self._file.write(part.astype(self.dtype.newbyteorder("<"), copy=False).tobytes())
            self.shards[-1]["tokens"] += len(part)

    def _next(self) -> None:
        self.close()
        name = f"tokens_{len(self.shards):05d}.bin"
        self._file = (self.folder / name).open("wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _clear(out: paths.Path) -> None:
    """Make ``out`` ready for a new stream: remove an earlier one (its marker first, so that no
    reader takes the folder as complete meanwhile) or what a run cut short left there. Files of
    any other kind are not ours to delete: a UserError."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; pass an empty or new folder to --out")
    entries = list(out.iterdir()) if out.is_dir() else [out]
    foreign = [e.name for e in entries if not _OUR_FILES.fullmatch(e.name)]
    if foreign or not out.is_dir():
        raise UserError(
            f"{out} exists and is not prepared data (it holds {foreign[0]!r}); "
            "pass an empty or new folder to --out"
        )
    paths.remove(out / METADATA)
    for entry in entries:
        paths.remove(entry)


def prepare_data(
    files: Sequence[InputFile],
    tokenizer: Tokenizer,
    out_dir: paths.PathLike,
    *,
    val_fraction: float = 0.01,
    workers: int | None = None,
    sources: Any = None,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    chunk_bytes: int = _CHUNK_BYTES,
) -> PreparedData:
    """Tokenize ``files`` into ``out_dir``, a local folder or a ``gs://`` URL (replacing an earlier
    prepared folder there).

    Args:
        val_fraction: share of the stream, taken from its tail, held out for validation.
        workers: tokenizer processes; default: one per CPU (in-process for inputs under 2 chunks).
        sources: what to record as the inputs in the metadata (default: the file list).
    """
    from tqdm import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val fraction {val_fraction} must be in [0, 1)")
    out = paths.as_path(out_dir)
    _clear(out)
    total = sum(f.size for f in files)
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= 2 * chunk_bytes else 1
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(out, token_dtype(tokenizer.vocab_size), shard_tokens)
    try:
        skipped: list[str] = []
        n_tokens = n_invalid = n_docs = 0
        groups = batched(iter_pieces(files, skipped), chunk_bytes)
        with tqdm(total=total, desc="tokenizing", unit="B", unit_scale=True, disable=not progress) as bar:
            for ids, n_bytes, bad, docs in _tokenized(groups, tokenizer, workers):
                writer.write(ids)
                n_tokens += len(ids)
                n_invalid += bad
                n_docs += docs
                bar.update(min(n_bytes, bar.total - bar.n))
        writer.close()
        if n_tokens == n_docs:  # nothing but end-of-text ids
            what = (
                f"{len(skipped)} binary file(s) skipped, such as {skipped[0]}"
                if skipped
                else "empty files only"
            )
            raise UserError(f"the input holds no text ({what}); pass non-empty text or JSONL files")
        n_val = int(round(n_tokens * val_fraction))
        tokenizer.save(out)
        meta = {
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "dtype": writer.dtype.name,
            "n_tokens": n_tokens,
            "n_train_tokens": n_tokens - n_val,
            "n_val_tokens": n_val,
            "val_fraction": val_fraction,
            "documents": n_docs,
            "invalid_utf8_bytes": n_invalid,
            "skipped_binary_files": skipped,
            "tokenizer": {
                "sha256": tokenizer.checksum,
                "vocab_size": tokenizer.vocab_size,
                "eot_id": tokenizer.eot_id,
                "file": tokenizer.file_name,
            },
            "shards": writer.shards,
            "sources": sources if sources is not None else [str(f.path) for f in files],
        }
        paths.write_text(out / METADATA, json.dumps(meta, indent=1))  # written last: marks completion
    except BaseException:
        writer.close()
        _clear(out)  # no marker, no stream: nothing half-made stays behind
        if created:
            paths.remove(out)
        raise
    return PreparedData.load(out, tokenizer)


def summary(data: PreparedData) -> str:
    """One paragraph for the CLI: counts, and what was replaced or skipped."""
    m = data.meta
    lines = [
        f"{data.dir}: {m.get('documents', 0):,} documents, {m['n_tokens']:,} tokens ({m['dtype']}, "
        f"{len(m['shards'])} shard(s)): train {m['n_train_tokens']:,}, val {m['n_val_tokens']:,}",
    ]
    if m.get("invalid_utf8_bytes"):
        lines.append(f"warning: {m['invalid_utf8_bytes']:,} invalid UTF-8 bytes were replaced by U+FFFD")
    if m.get("skipped_binary_files"):
        lines.append(f"warning: skipped {len(m['skipped_binary_files'])} binary file(s) found in folders")
    return "\n".join(lines)
