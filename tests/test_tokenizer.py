"""SentencePiece tokenizer: exact round trips, the char model's vocabulary, the CLI and its errors."""

import hashlib
import random

import pytest

from gpt3_jax.cli import main
from gpt3_jax.data import Tokenizer, load_tokenizer, train_tokenizer
from gpt3_jax.data.corpus import SHAKESPEARE
from gpt3_jax.data.tokenizer import EOT_PIECE
from gpt3_jax.errors import UserError


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Tokenizer:
    return train_tokenizer([SHAKESPEARE], 512, tmp_path_factory.mktemp("bpe"), progress=False)


@pytest.fixture
def shakespeare_text(shakespeare) -> str:
    return shakespeare.read_text(encoding="utf-8")


def _random_text(rng: random.Random) -> str:
    """Text built to trip a tokenizer: whitespace runs, newlines, CR, tabs, emoji, CJK, combining
    marks, SentencePiece's own U+2581, control characters and arbitrary code points."""
    alphabets = [
        "abc XYZ 012",
        " " * 5 + "\t\n\r\x0b\x0c",
        "\u2581\u2581 \u3000\u00a0\ufeff",
        "😀🙂👍🏽🇫🇷",
        "日本語中文한국어",
        "e\u0301a\u0308\u200d\u200b",
        "\x00\x01\x1f\x7f",
        EOT_PIECE,
    ]
    parts = []
    for _ in range(rng.randint(0, 12)):
        if rng.random() < 0.2:  # any code point that UTF-8 can hold (no surrogates)
            cp = rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
            parts.append(chr(cp))
        else:
            alphabet = rng.choice(alphabets)
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))))
    return "".join(parts)


def test_round_trip_random_unicode(bpe):
    rng = random.Random(1234)
    for _ in range(2000):
        text = _random_text(rng)
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text, repr(text)


def test_round_trip_whole_shakespeare(bpe, shakespeare_text):
    ids = bpe.encode(shakespeare_text)
    assert len(ids) < len(shakespeare_text) / 1.5  # merges happened: fewer ids than characters
    assert bpe.decode(ids) == shakespeare_text


def test_end_of_text_is_reserved(bpe):
    assert bpe.eot_id == 1 and bpe.id_to_piece(bpe.eot_id) == EOT_PIECE
    ids = bpe.encode(f"a{EOT_PIECE}b")  # spelled out in text, it stays text
    assert bpe.eot_id not in ids
    assert bpe.decode([*bpe.encode("a"), bpe.eot_id, *bpe.encode("b")]) == "ab"


def test_checksum_and_load(bpe):
    assert bpe.checksum == hashlib.sha256(bpe.path.read_bytes()).hexdigest()
    again = load_tokenizer(bpe.path.parent)  # a folder holding tokenizer.model works too
    assert again.checksum == bpe.checksum and again.vocab_size == 512


def test_char_model_is_the_65_symbols_plus_specials(shakespeare, shakespeare_text, tmp_path):
    tok = train_tokenizer([shakespeare], 1000, tmp_path, "char", progress=False)
    symbols = set(shakespeare_text)
    assert len(symbols) == 65
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert tok.vocab_size == 65 + 2
    assert pieces == {"<unk>", EOT_PIECE} | {"\u2581" if c == " " else c for c in symbols}
    assert tok.decode(tok.encode(shakespeare_text)) == shakespeare_text


def test_unigram_trains(tmp_path, shakespeare_text):
    lines = shakespeare_text.splitlines()[:3000]
    tok = train_tokenizer(None, 400, tmp_path, "unigram", lines=lines, progress=False)
    text = "\n".join(lines[:50])
    assert tok.vocab_size == 400 and tok.decode(tok.encode(text)) == text


def test_cli_train(shakespeare, tmp_path, capfd):
    out = tmp_path / "tok"
    rc = main(["tokenizer", "train", "--input", str(shakespeare), "--vocab-size", "400", "--out", str(out)])
    assert rc == 0
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err  # its progress bar is drawn on a terminal only
    assert "400 ids" in captured.out
    assert load_tokenizer(out / "tokenizer.model").vocab_size == 400


@pytest.mark.parametrize(
    "case", ["missing", "empty", "binary", "too_small", "too_small_for_text", "bad_model"]
)
def test_cli_errors(case, tmp_path, capfd):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    text = tmp_path / "a.txt"
    text.write_text("hello world\n" * 10)
    inputs, vocab = {
        "missing": ([str(tmp_path / "nope.txt")], 300),
        "empty": ([str(empty)], 300),
        "binary": ([str(binary)], 300),
        "too_small": ([str(text)], 100),
        "too_small_for_text": ([str(SHAKESPEARE)], 300),  # 65 characters + 256 bytes + 2 > 300
        "bad_model": ([str(text)], 300),
    }[case]
    if case == "bad_model":
        with pytest.raises(UserError, match="not a SentencePiece model"):
            load_tokenizer(text)
        return
    rc = main(
        ["tokenizer", "train", "--input", *inputs, "--vocab-size", str(vocab), "--out", str(tmp_path / "o")]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("error: ")
    assert {"missing": "not found", "empty": "empty", "binary": "binary"}.get(case, "too small") in err[-1]
    if case == "too_small_for_text":
        assert ">= 323" in err[-1]
