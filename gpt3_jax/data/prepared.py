"""Prepared data on disk: a token stream in raw binary shards plus ``metadata.json``.

Layout of a prepared folder::

    metadata.json          format, dtype, token counts, shard list, tokenizer sha256, report
    tokenizer.model        a copy of the tokenizer the stream was made with (or tokenizer.json)
    tokens_00000.bin ...   the stream: documents joined by end-of-text, raw little-endian uint16/32

The stream is one sequence split across shards; its first ``n_train_tokens`` are the training split
and the rest, the tail, the validation split. Local shards are memory-mapped, shards in a bucket
(``gs://``) read window by window with ranged reads; neither is ever read whole. ``metadata.json``
is written last: a folder without it is not (yet) prepared data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpt3_jax import paths
from gpt3_jax.data.tokenizer import Tokenizer, load_tokenizer
from gpt3_jax.errors import UserError

FORMAT = "gpt3_jax.tokens/1"
METADATA = "metadata.json"


class TokenStream:
    """A read-only view of tokens ``[start, stop)`` of a sharded stream.

    Picklable by paths (grain worker processes reopen the memory maps rather than copy them).
    """

    def __init__(self, shards: list[tuple[paths.PathLike, int]], dtype: np.dtype, start: int, stop: int):
        self._shards = [(paths.as_path(p), int(n)) for p, n in shards if n > 0]
        self._dtype = np.dtype(dtype)
        self._offsets = np.cumsum([0] + [n for _, n in self._shards])  # stream position of each shard
        self.start, self.stop = start, stop
        self._maps: list[Any] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def _open(self) -> list[Any]:
        """Per shard, what slices into its tokens: a memory map, or a ``_RemoteShard``."""
        if self._maps is None:
            self._maps = [
                _RemoteShard(p, self._dtype, n)
                if paths.is_remote(p)
                else np.memmap(p, dtype=self._dtype, mode="r", shape=(n,))
                for p, n in self._shards
            ]
        return self._maps

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of this view, as int32: shape [stop - start]."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"[{start}, {stop}) outside a stream of {len(self)} tokens")
        lo, hi = self.start + start, self.start + stop
        maps = self._open()
        first = int(np.searchsorted(self._offsets, lo, side="right")) - 1
        out = np.empty(hi - lo, np.int32)
        filled = 0
        for i in range(first, len(maps)):
            begin = max(lo - self._offsets[i], 0)
            end = min(hi - self._offsets[i], len(maps[i]))
            out[filled : filled + end - begin] = maps[i][begin:end]
            filled += end - begin
            if filled == len(out):
                break
        return out


class _RemoteShard:
    """A shard in a bucket, sliced like a memory map: ``[begin:end]`` is one ranged read."""

    def __init__(self, path: paths.Path, dtype: np.dtype, n: int):
        self.path, self.dtype, self.n = path, dtype.newbyteorder("<"), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, s: slice) -> np.ndarray:
        size = self.dtype.itemsize
        raw = paths.read_range(self.path, int(s.start) * size, int(s.stop) * size)
        return np.frombuffer(raw, self.dtype)


@dataclass(frozen=True)
class PreparedData:
    """A prepared folder, loaded: its metadata, its tokenizer, and views of the two splits."""

    dir: paths.Path
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def n_train_tokens(self) -> int:
        return int(self.meta["n_train_tokens"])

    @property
    def n_val_tokens(self) -> int:
        return int(self.meta["n_val_tokens"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])

    def _shards(self) -> list[tuple[paths.Path, int]]:
        return [(self.dir / s["file"], s["tokens"]) for s in self.meta["shards"]]

    def train_stream(self) -> TokenStream:
        return TokenStream(self._shards(), self.dtype, 0, self.n_train_tokens)

    def val_stream(self) -> TokenStream:
        n = self.n_train_tokens
        return TokenStream(self._shards(), self.dtype, n, n + self.n_val_tokens)

    @classmethod
    def load(cls, path: paths.PathLike, tokenizer: paths.PathLike | Tokenizer | None = None) -> PreparedData:
        """Open a prepared folder (local or ``gs://``). ``tokenizer`` (default: the copy inside) must
        be the one it was made with; a different one is an error, since its ids would mean other text."""
        d = paths.as_path(path)
        meta_file = d / METADATA
        if not meta_file.is_file():
            raise UserError(f"{d} is not prepared data (no {METADATA}); make it with `gpt3-jax data prepare`")
        try:
            meta = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{meta_file} is corrupt; prepare the data again") from None
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{meta_file}: format {meta.get('format')!r} is not {FORMAT!r}; prepare the data again"
            )
        if tokenizer is None:
            tok = load_tokenizer(d / meta["tokenizer"].get("file", "tokenizer.model"))
        else:
            tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
        recorded = meta["tokenizer"]["sha256"]
        if tok.checksum != recorded:
            raise UserError(
                f"{d} was prepared with another tokenizer (sha256 {recorded[:12]}…, not {tok.checksum[:12]}… "
                f"of {tok.path}); use that tokenizer or prepare the data again with this one"
            )
        for shard in meta["shards"]:
            f = d / shard["file"]
            if not f.is_file() or f.stat().length != shard["tokens"] * np.dtype(meta["dtype"]).itemsize:
                raise UserError(f"{f} is missing or truncated; prepare the data again")
        return cls(d, tok, meta)


def is_prepared(path: paths.PathLike) -> bool:
    return (paths.as_path(path) / METADATA).is_file()
