"""Hugging Face tokenizers behind the one ``Tokenizer`` interface: loading either kind, exact round
trips, storage with checkpoints and prepared data, and their one-line errors."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import pytest

from gpt3_jax.cli import main
from gpt3_jax.data import (
    HFTokenizer,
    PreparedData,
    SentencePieceTokenizer,
    list_inputs,
    load_tokenizer,
    prepare_data,
    train_tokenizer,
)
from gpt3_jax.data.corpus import SHAKESPEARE
from gpt3_jax.data.tokenizer import EOT_PIECE
from gpt3_jax.errors import UserError

TRICKY = [
    "hello world",
    "Hello , world . No cleanup : ' s  ,  spaces  before punctuation stay .",
    "  leading and trailing  ",
    "lines\n\n\nand\r\n\ttabs\n    indented\n",
    "café 東京 😀 a\u0301 \u2581 \x00\x07 \U0010ffff",
    f"text that spells {EOT_PIECE} out",
]


@pytest.fixture(scope="module")
def hf(gpt2_style_tokenizer: Path) -> HFTokenizer:
    return load_tokenizer(gpt2_style_tokenizer / "tokenizer.json")


def test_loads_a_file_or_a_folder_as_the_one_interface(hf: HFTokenizer, gpt2_style_tokenizer: Path) -> None:
    from tokenizers import Tokenizer

    assert isinstance(hf, HFTokenizer) and hf.file_name == "tokenizer.json"
    assert (hf.vocab_size, hf.eot_id) == (512, 0)
    raw = (gpt2_style_tokenizer / "tokenizer.json").read_bytes()
    assert hf.model_bytes() == raw and load_tokenizer(gpt2_style_tokenizer).checksum == hf.checksum
    backend = Tokenizer.from_file(str(gpt2_style_tokenizer / "tokenizer.json"))
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000]
    assert hf.encode(text) == backend.encode(text).ids  # the library's own ids


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_is_exact(hf: HFTokenizer, text: str) -> None:
    ids = hf.encode(text)
    assert hf.decode(ids) == text
    assert hf.decode([hf.eot_id, *ids, hf.eot_id]) == text  # end-of-text decodes to nothing
    assert hf.eot_id not in ids  # spelt out, it is text: no document can forge a boundary


def test_round_trip_random_text(hf: HFTokenizer) -> None:
    rng = random.Random(0)
    alphabet = " \n\t\r.,;'!?-_aeiouAEIOU0123456789éß東😀\u2581"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        assert hf.decode(hf.encode(text)) == text


def test_vocab_and_merges_make_the_same_tokenizer(hf: HFTokenizer, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(hf.model_bytes().decode())
    backend.model.save(str(tmp_path))  # GPT-2's older layout: vocab.json + merges.txt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    old = load_tokenizer(tmp_path)
    assert isinstance(old, HFTokenizer) and (old.vocab_size, old.eot_id) == (hf.vocab_size, hf.eot_id)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:20_000] + "".join(TRICKY)
    assert old.encode(text) == hf.encode(text) and old.decode(old.encode(text)) == text
    assert load_tokenizer(tmp_path / "vocab.json").checksum == old.checksum  # the same file every time


def test_pickles_as_its_file(hf: HFTokenizer) -> None:
    again = pickle.loads(pickle.dumps(hf))
    assert again.checksum == hf.checksum and again.encode("to be, or not") == hf.encode("to be, or not")


def test_a_folder_holds_one_tokenizer(hf: HFTokenizer, tmp_path: Path) -> None:
    lines = SHAKESPEARE.read_text(encoding="utf-8").splitlines()[:2000]
    sp = train_tokenizer(None, 400, tmp_path / "sp", lines=lines, progress=False)
    folder = tmp_path / "ckpt"
    sp.save(folder)
    assert isinstance(load_tokenizer(folder), SentencePieceTokenizer)
    hf.save(folder)  # replaces the other kind
    assert sorted(p.name for p in folder.iterdir()) == ["tokenizer.json"]
    assert isinstance(load_tokenizer(folder), HFTokenizer)


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "not found"),
        ("text_file", "not a SentencePiece model nor a Hugging Face tokenizer.json"),
        ("empty_json", "not a valid Hugging Face tokenizer.json"),
        ("broken_json", "not a valid Hugging Face tokenizer.json"),
        ("empty_folder", "holds no tokenizer"),
        ("vocab_only", "holds no tokenizer"),
        ("no_eot", "no <|endoftext|> token"),
    ],
)
def test_bad_tokenizer_is_one_line_error(hf: HFTokenizer, tmp_path: Path, capsys, case: str, expected: str):
    def without_eot() -> str:
        spec = json.loads(hf.model_bytes())
        spec["added_tokens"] = []
        spec["model"]["vocab"] = {k: v for k, v in spec["model"]["vocab"].items() if k != EOT_PIECE}
        return json.dumps(spec)

    path = {
        "missing": lambda: tmp_path / "nope.model",
        "text_file": lambda: _write(tmp_path / "notes.txt", "just some text\n"),
        "empty_json": lambda: _write(tmp_path / "tok" / "tokenizer.json", "{}"),
        "broken_json": lambda: _write(tmp_path / "tok" / "tokenizer.json", '{"version": "1.0", '),
        "empty_folder": lambda: _write(tmp_path / "empty" / "README", "no tokenizer here").parent,
        "vocab_only": lambda: _write(tmp_path / "hf" / "vocab.json", "{}").parent,
        "no_eot": lambda: _write(tmp_path / "tokenizer.json", without_eot()),
    }[case]()
    with pytest.raises(UserError, match=expected):
        load_tokenizer(path)
    text = _write(tmp_path / "in.txt", "hello\n")
    args = ["data", "prepare", "--input", str(text), "--tokenizer", str(path), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and expected in err and "\n" not in err


def test_prepared_data_records_and_checks_the_hf_tokenizer(hf: HFTokenizer, tmp_path: Path) -> None:
    files = list_inputs([SHAKESPEARE])
    data = prepare_data(
        files, hf, tmp_path / "p", val_fraction=0.0, workers=2, chunk_bytes=100_000, progress=False
    )
    assert data.meta["tokenizer"]["file"] == "tokenizer.json" and (data.dir / "tokenizer.json").is_file()
    assert data.meta["tokenizer"]["sha256"] == hf.checksum
    again = PreparedData.load(data.dir)  # the copy inside, found by its recorded name
    assert isinstance(again.tokenizer, HFTokenizer) and again.tokenizer.checksum == hf.checksum
    stream = data.train_stream().read(0, data.n_train_tokens)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    assert stream.tolist() == [*hf.encode(text), hf.eot_id]  # the pieces' ids are the whole text's
    sp = train_tokenizer(None, 400, tmp_path / "sp", lines=text.splitlines()[:2000], progress=False)
    with pytest.raises(UserError, match="prepared with another tokenizer"):
        PreparedData.load(data.dir, sp)


def test_big_documents_are_cut_where_byte_level_bpe_does_not_merge(hf: HFTokenizer, monkeypatch) -> None:
    """GPT-2's pre-tokenizer joins a line break with the whitespace beside it ("  \\n", "\\n    "):
    pieces end only at breaks between two non-space characters, so their ids are the whole's."""
    import argparse
    import inspect

    from gpt3_jax.data import sources

    code = inspect.getsource(argparse)
    path = Path(inspect.getsourcefile(argparse))
    monkeypatch.setattr(sources, "_PIECE_BYTES", 2000)
    pieces = list(sources.iter_pieces(list_inputs([path])))
    assert len(pieces) > 5 and "".join(p.text for p in pieces) == code
    assert [i for p in pieces for i in hf.encode(p.text)] == hf.encode(code)
    naive = [code[i : i + 2000] for i in range(0, len(code), 2000)]  # cuts anywhere: other ids
    assert [i for p in naive for i in hf.encode(p)] != hf.encode(code)


def test_checkpoint_carries_the_tokenizer_to_load(hf: HFTokenizer, tmp_path: Path) -> None:
    from flax import nnx

    from gpt3_jax import checkpoint
    from gpt3_jax.config import Config, ModelConfig
    from gpt3_jax.model import GPT
    from gpt3_jax.sampling import load

    cfg = ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32, vocab_size=512, dtype="float32")
    params = nnx.state(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    checkpoint.save_params(tmp_path / "ckpt", Config(model=cfg), params, tokenizer=hf.path)
    assert checkpoint.tokenizer_path(tmp_path / "ckpt") == tmp_path / "ckpt" / "tokenizer.json"
    lm = load(tmp_path / "ckpt")
    assert isinstance(lm.tokenizer, HFTokenizer) and lm.tokenizer.checksum == hf.checksum
    assert lm.encode("to be") == hf.encode("to be") and lm.eot_id == hf.eot_id
    small = ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32, vocab_size=300, dtype="float32")
    params = nnx.state(GPT(small, rngs=nnx.Rngs(0)), nnx.Param)
    checkpoint.save_params(tmp_path / "small", Config(model=small), params, tokenizer=hf)
    with pytest.raises(UserError, match="512 tokens but the checkpoint's model.vocab_size is 300"):
        load(tmp_path / "small")
