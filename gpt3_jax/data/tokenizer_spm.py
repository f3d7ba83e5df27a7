"""SentencePiece tokenizers: train one, and load it behind the ``Tokenizer`` interface.

Trained models are set up so that ``decode(encode(text)) == text`` for any Unicode text:

- no normalisation (``identity``), no dummy prefix, whitespace runs kept: the text is not rewritten;
- byte fallback (BPE, unigram): a character without a piece becomes its UTF-8 bytes, never ``<unk>``;
- ``"\\n"`` is a piece of its own, because SentencePiece trains on lines and would otherwise never see
  one (code and prose are full of them); it also means pieces never span a line break;
- SentencePiece writes spaces as ``"▁"`` (U+2581) internally, so a literal U+2581 in the text would
  decode as a space; :meth:`SentencePieceTokenizer.encode` sends it as its three UTF-8 bytes instead.

Ids: 0 is ``<unk>``, 1 the end-of-text token ``<|endoftext|>`` (a control symbol: text that spells
it out is encoded as ordinary characters, so no document can forge a document boundary).
A ``char`` model (the nanoGPT tiny-Shakespeare setting) has no byte fallback: its vocabulary is
exactly the input's characters plus those two ids.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from gpt3_jax import paths
from gpt3_jax.data.tokenizer import EOT_PIECE, Tokenizer
from gpt3_jax.errors import UserError

MODEL_TYPES = ("bpe", "unigram", "char")
UNK_ID = 0
EOT_ID = 1
SPM_FILE = "tokenizer.model"
_SPACE_MARK = "\u2581"  # SentencePiece's visible space
_MAX_SENTENCES = 2_000_000  # cap on the sentences SentencePiece keeps in memory
_SAMPLE_BYTES = 50_000_000  # text sampled for training: bounds its time and memory on big inputs


class SentencePieceTokenizer(Tokenizer):
    """A loaded SentencePiece model (a ``tokenizer.model`` file); see ``Tokenizer`` for the interface."""

    file_name = SPM_FILE

    def __init__(self, model_bytes: bytes, path: paths.PathLike = "<memory>"):
        import sentencepiece as spm

        super().__init__(model_bytes, path)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError:
            raise UserError(
                f"{self.path}: not a SentencePiece model nor a Hugging Face tokenizer.json; pass one of "
                "those, or a folder holding one"
            ) from None
        self.vocab_size = self._sp.vocab_size()
        eos = self._sp.eos_id()
        self.eot_id = eos if eos >= 0 else self._sp.piece_to_id(EOT_PIECE)
        if self.eot_id == self._sp.unk_id():
            raise UserError(f"{self.path}: the tokenizer has no {EOT_PIECE} token; train one with gpt3-jax")
        # byte-fallback ids of U+2581 (empty when the model has no byte pieces, e.g. char models)
        pieces = [f"<0x{b:02X}>" for b in _SPACE_MARK.encode()]
        ids = [self._sp.piece_to_id(p) for p in pieces]
        has_bytes = all(self._sp.id_to_piece(i) == p for i, p in zip(ids, pieces, strict=True))
        self._space_mark_ids = ids if has_bytes else []

    def encode(self, text: str) -> list[int]:
        """Text → ids (no end-of-text is added)."""
        if _SPACE_MARK not in text or not self._space_mark_ids:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(text.split(_SPACE_MARK)):
            if i:
                ids.extend(self._space_mark_ids)
            ids.extend(self._sp.encode(part))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text. The end-of-text id decodes to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))


def sample_lines(texts: Iterable[str], total_bytes: int, budget: int = _SAMPLE_BYTES) -> Iterator[str]:
    """The non-empty lines of ``texts``, each kept with probability ``budget / total_bytes``.

    A fixed-seed Bernoulli sample: the same inputs give the same sample on every machine, and the
    text SentencePiece holds stays near ``budget`` bytes however large the corpus.
    """
    keep = min(1.0, budget / max(total_bytes, 1))
    rng = random.Random(0)
    for text in texts:
        for line in text.split("\n"):
            if line and (keep >= 1.0 or rng.random() < keep):
                yield line


def train_tokenizer(
    inputs: Sequence[paths.PathLike] | None,
    vocab_size: int,
    out_dir: paths.PathLike,
    model_type: str = "bpe",
    *,
    lines: Iterable[str] | None = None,
    progress: bool = True,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model and write ``out_dir/tokenizer.model`` (``out_dir`` local or
    ``gs://``; the file is written atomically, once trained).

    Args:
        inputs: text files, folders, JSONL(.gz) — read as ``gpt3-jax data prepare`` reads them.
        vocab_size: ids in the model, the two special ones included (for ``char``: an upper bound).
        model_type: ``bpe`` (default), ``unigram`` or ``char``.
        lines: sentences to train on instead of ``inputs`` (already sampled).
    """
    import sentencepiece as spm

    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown tokenizer type {model_type!r}; use one of {list(MODEL_TYPES)}")
    files = None
    if lines is None:
        from gpt3_jax.data.sources import list_inputs

        files = list_inputs(inputs or ())
    char = model_type == "char"
    minimum = 2 + (0 if char else 256 + 1)
    if vocab_size < minimum:
        need = "the 2 special ids" if char else "256 byte pieces, 2 special ids and at least one more"
        raise UserError(f"vocab size {vocab_size} is too small: it must hold {need}; use >= {minimum}")
    spm.set_random_generator_seed(0)  # reservoir sampling of sentences: same model on every machine
    work = tempfile.TemporaryDirectory(prefix="gpt3-jax-spm-")  # SentencePiece writes local files
    options = dict(
        model_prefix=str(Path(work.name) / "tokenizer"),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=not char,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        character_coverage=1.0,
        user_defined_symbols=["\n"],
        unk_id=UNK_ID,
        eos_id=EOT_ID,
        eos_piece=EOT_PIECE,
        bos_id=-1,
        pad_id=-1,
        input_sentence_size=_MAX_SENTENCES,
        shuffle_input_sentence=True,
        hard_vocab_limit=not char,  # char: the vocabulary is whatever characters the text has
        num_threads=os.cpu_count() or 1,
        minloglevel=0 if progress else 2,
    )
    with work, _progress_from_log(model_type, vocab_size, progress) as bar_file:
        if files is not None:  # read lazily, as SentencePiece asks, with a bar on the real stderr
            from gpt3_jax.data.sources import read_texts

            texts = read_texts(files, desc="reading", progress=progress, file=bar_file)
            lines = sample_lines(texts, sum(f.size for f in files))
        counted = _Counted(lines)
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=counted, **options)
        except RuntimeError as exc:
            if counted.n == 0:
                raise UserError("no text to train the tokenizer on; the inputs are empty") from None
            message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if need := re.search(r"smaller than required_chars\. \d+ vs (\d+)", message):
                raise UserError(
                    f"vocab size {vocab_size} is too small for this text: its characters, the byte pieces "
                    f"and the special ids take {need[1]}; use a vocab size >= {need[1]}"
                ) from None
            if limit := re.search(r"Vocabulary size too high .*<= (\d+)", message):
                raise UserError(
                    f"vocab size {vocab_size} is more than this text supports ({limit[1]}); "
                    f"use a vocab size <= {limit[1]} or more text"
                ) from None
            raise UserError(f"SentencePiece could not train: {message}") from None
        model = (Path(work.name) / SPM_FILE).read_bytes()  # the .vocab beside it is not needed
    out = paths.as_path(out_dir)
    tok = SentencePieceTokenizer(model, out / SPM_FILE)
    tok.save(out)
    return tok


class _Counted:
    """An iterator that counts what it yields (to tell "empty input" from other failures)."""

    def __init__(self, items: Iterable[str]):
        self._it = iter(items)
        self.n = 0

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> str:
        item = next(self._it)
        self.n += 1
        return item


@contextlib.contextmanager
def _progress_from_log(model_type: str, vocab_size: int, enabled: bool) -> Iterator[TextIO | None]:
    """A tqdm bar driven by SentencePiece's C++ log, which goes straight to file descriptor 2.

    While training, fd 2 is a pipe read by a thread: BPE's ``Added: ... size=N`` lines move the bar,
    warnings and errors are kept and printed afterwards, the rest of the chatter is dropped. Yields
    a text file on the real stderr, for other bars shown meanwhile.
    """
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    sys.stderr.flush()
    saved = os.dup(2)
    bar_file = os.fdopen(os.dup(saved), "w")
    bar = tqdm(
        total=vocab_size if model_type == "bpe" else None,
        desc=f"training {model_type} tokenizer",
        unit=" pieces" if model_type == "bpe" else " steps",
        file=bar_file,
    )
    kept: list[str] = []
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        size = re.compile(rb"\bsize=(\d+)")
        with os.fdopen(read_fd, "rb") as log:
            for line in log:
                if b"LOG(WARNING)" in line or b"LOG(ERROR)" in line:
                    kept.append(line.decode(errors="replace").rstrip())
                elif model_type == "bpe" and b"Added:" in line and (m := size.search(line)):
                    bar.update(min(int(m[1]), vocab_size) - bar.n)
                elif model_type != "bpe" and (b"EM sub_iter" in line or b"Saving model" in line):
                    bar.update(1)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield bar_file
    finally:
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads EOF and stops
        os.close(saved)
        thread.join(timeout=10)
        if model_type == "bpe":
            bar.update(bar.total - bar.n)
        bar.close()
        bar_file.close()
        for line in kept[-5:]:
            print(line, file=sys.stderr)
