"""Tokenizers: one interface over SentencePiece models and Hugging Face tokenizers, and one loader.

A tokenizer is one file, stored as it is beside checkpoints and in prepared data (local or ``gs://``):

    tokenizer.model   a SentencePiece model (``gpt3-jax tokenizer train``)   SentencePieceTokenizer
    tokenizer.json    a Hugging Face ``tokenizers`` file (GPT-2's BPE)       HFTokenizer

``load_tokenizer(path)`` takes either file, a folder holding one, or a Hugging Face folder with only
GPT-2's older ``vocab.json`` + ``merges.txt``. Every tokenizer, whatever its kind, has:

    encode(text) -> ids    no special ids added; text that spells out <|endoftext|> stays text
    decode(ids) -> text    exact: decode(encode(text)) == text; the end-of-text id decodes to nothing
    vocab_size, eot_id     every id is < vocab_size; eot_id separates documents in a token stream
    checksum, path         sha256 of the file's bytes (prepared data records it), where it came from
    model_bytes(), save()  the file's bytes; write them into a folder as ``file_name``
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from gpt3_jax import paths
from gpt3_jax.errors import UserError

EOT_PIECE = "<|endoftext|>"  # the end-of-text token of every kind (GPT-2's spelling)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # what a folder may hold, in that preference
HF_VOCAB_FILES = ("vocab.json", "merges.txt")  # GPT-2's byte-level BPE before tokenizer.json existed


class Tokenizer(abc.ABC):
    """Text ↔ ids, loaded from one file.

    Attributes:
        path: the file (or Hugging Face folder) it was loaded from.
        checksum: sha256 of ``model_bytes()``; prepared data records it to catch mix-ups.
        vocab_size: number of ids, special ones included.
        eot_id: the end-of-text id that separates documents in a token stream.
    """

    file_name: ClassVar[str]  # the name it is saved under
    vocab_size: int
    eot_id: int

    def __init__(self, model_bytes: bytes, path: paths.PathLike = "<memory>"):
        self.path = paths.as_path(path)
        self.checksum = hashlib.sha256(model_bytes).hexdigest()
        self._model_bytes = model_bytes

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text → ids (no end-of-text or other special id is added)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. The end-of-text id decodes to nothing."""

    def model_bytes(self) -> bytes:
        return self._model_bytes

    def save(self, folder: paths.PathLike) -> paths.Path:
        """Write ``folder/file_name`` (atomically: a reader sees the old file or the new one, never
        half of one; left alone when it already holds these bytes) and remove a tokenizer of the
        other kind there, so the folder holds this one. Returns the file."""
        dest = paths.as_path(folder) / self.file_name
        if not dest.is_file() or dest.read_bytes() != self._model_bytes:
            paths.write_bytes(dest, self._model_bytes)
        for other in TOKENIZER_FILES:
            if other != self.file_name:
                paths.remove(dest.parent / other)
        return dest

    def __reduce__(self) -> tuple:
        # pickled as its file's bytes: worker processes rebuild it (a native tokenizer may not pickle)
        return type(self), (self._model_bytes, str(self.path))

    def __repr__(self) -> str:
        kind = type(self).__name__
        return f"{kind}({str(self.path)!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


def find_tokenizer(folder: paths.PathLike) -> paths.Path | None:
    """The tokenizer file a folder holds (``tokenizer.json`` or ``tokenizer.model``), or None."""
    for name in TOKENIZER_FILES:
        if (found := paths.as_path(folder) / name).is_file():
            return found
    return None


def load_tokenizer(path: paths.PathLike) -> Tokenizer:
    """Load a tokenizer of either kind: a SentencePiece ``.model`` file, a Hugging Face
    ``tokenizer.json``, a folder holding one of them, or a folder with ``vocab.json`` + ``merges.txt``.

    Anything else is a ``UserError``: a missing path, a file of neither format, a broken
    tokenizer.json, a tokenizer without ``<|endoftext|>``.
    """
    from gpt3_jax.data.tokenizer_hf import HFTokenizer
    from gpt3_jax.data.tokenizer_spm import SentencePieceTokenizer

    p = paths.as_path(path)
    if p.is_dir():
        found = find_tokenizer(p)
        if found is None:
            return _from_vocab_merges(p)
        p = found
    elif p.name in HF_VOCAB_FILES and p.is_file():
        return _from_vocab_merges(p.parent)
    if not p.is_file():
        raise UserError(
            f"tokenizer {str(p)!r} not found; pass a SentencePiece .model (`gpt3-jax tokenizer train`), "
            "a Hugging Face tokenizer.json, or a folder holding one"
        )
    data = p.read_bytes()
    json = p.suffix == ".json" or data[:1] == b"{"  # a SentencePiece protobuf starts with 0x0A
    kind = HFTokenizer if json else SentencePieceTokenizer
    return kind(data, p)


def _from_vocab_merges(folder: paths.Path) -> Tokenizer:
    from gpt3_jax.data.tokenizer_hf import HFTokenizer

    vocab, merges = (folder / name for name in HF_VOCAB_FILES)
    if not (vocab.is_file() and merges.is_file()):
        raise UserError(
            f"{str(folder)!r} holds no tokenizer: no tokenizer.json or tokenizer.model, nor the pair "
            "vocab.json + merges.txt"
        )
    return HFTokenizer.from_vocab_merges(vocab, merges)


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
