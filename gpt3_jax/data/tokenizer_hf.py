"""Hugging Face tokenizers (the ``tokenizers`` library), e.g. GPT-2's byte-level BPE, behind the
``Tokenizer`` interface.

The tokenizer is a ``tokenizer.json``, kept byte for byte (its sha256 is the checksum). GPT-2's older
``vocab.json`` + ``merges.txt`` become the tokenizer ``transformers`` builds from them (byte-level
BPE, no prefix space), serialised as a tokenizer.json. It behaves as the SentencePiece one does:

- ``encode`` adds no special ids (the file's post-processor, e.g. a BOS, is not applied), and
  special tokens spelt out in the text are encoded as text, so no document can forge a boundary;
- ``decode`` drops the end-of-text id and cleans nothing up (no space removal before
  punctuation): byte-level BPE gives back exactly the text it encoded;
- the end of text is ``<|endoftext|>`` (GPT-2's id 50256), which the tokenizer must hold.

``save_pretrained_files`` writes what ``transformers.AutoTokenizer.from_pretrained`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from gpt3_jax import paths
from gpt3_jax.data.tokenizer import EOT_PIECE, Tokenizer
from gpt3_jax.errors import UserError

HF_FILE = "tokenizer.json"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class HFTokenizer(Tokenizer):
    """A loaded Hugging Face ``tokenizer.json``; see ``Tokenizer`` for the interface."""

    file_name = HF_FILE

    def __init__(self, model_bytes: bytes, path: paths.PathLike = "<memory>"):
        from tokenizers import Tokenizer as Backend

        super().__init__(model_bytes, path)
        try:
            self._tok = Backend.from_str(model_bytes.decode("utf-8"))
        except Exception as exc:  # UnicodeDecodeError, or the library's own (untyped) Exception
            raise UserError(
                f"{self.path}: not a valid Hugging Face tokenizer.json ({_first_line(exc)})"
            ) from None
        self._tok.encode_special_tokens = True  # "<|endoftext|>" in a text is text, as in SentencePiece
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        eot = vocab.get(EOT_PIECE)
        if eot is None:
            raise UserError(
                f"{self.path}: the tokenizer has no {EOT_PIECE} token, the end of text that separates "
                "documents; use a GPT-2 style tokenizer that has one"
            )
        self.eot_id = eot

    @classmethod
    def from_vocab_merges(cls, vocab: paths.PathLike, merges: paths.PathLike) -> HFTokenizer:
        """GPT-2's ``vocab.json`` + ``merges.txt`` → its byte-level BPE tokenizer (as the
        ``tokenizer.json`` that ``transformers`` converts them to)."""
        from tokenizers import Tokenizer as Backend
        from tokenizers import decoders, models, pre_tokenizers, processors

        try:
            with paths.local_file(vocab) as vocab_file, paths.local_file(merges) as merges_file:
                bpe = models.BPE.from_file(str(vocab_file), str(merges_file))
        except Exception as exc:  # the library's own (untyped) Exception
            raise UserError(f"{vocab} + {merges}: not a BPE vocabulary ({_first_line(exc)})") from None
        tok = Backend(bpe)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        if tok.token_to_id(EOT_PIECE) is not None:  # mark it special, as GPT-2's tokenizer.json does
            tok.add_special_tokens([EOT_PIECE])
        return cls(tok.to_str().encode("utf-8"), paths.as_path(vocab).parent)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids if int(i) != self.eot_id], skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(int(i)) or ""

    def save_pretrained_files(self, out_dir: paths.PathLike, *, model_max_length: int | None = None) -> None:
        """Write ``tokenizer.json`` + ``tokenizer_config.json``, which
        ``transformers.AutoTokenizer.from_pretrained(out_dir)`` loads as a fast tokenizer with
        ``<|endoftext|>`` as its BOS, EOS and UNK token (GPT-2's convention)."""
        out = paths.as_path(out_dir)
        self.save(out)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": EOT_PIECE,
            "eos_token": EOT_PIECE,
            "unk_token": EOT_PIECE,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,  # decode gives back the text exactly
        }
        if model_max_length is not None:
            config["model_max_length"] = model_max_length
        paths.write_text(out / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
