"""``gpt3_jax.paths``: one behaviour for local folders and Cloud Storage URLs (a local emulator of
the Cloud Storage JSON API stands in for a bucket; see the ``gcs`` fixture), and the readers built
on it: data inputs (text, JSONL, gzip, folders) and prepared data from ``gs://``."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax import paths


@pytest.fixture(params=["local", "gs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh folder: a local one, or one in the emulated bucket."""
    return str(tmp_path / "root") if request.param == "local" else request.getfixturevalue("gcs")


def test_as_path_keeps_urls_and_local_paths() -> None:
    url = paths.as_path("gs://bucket/runs/a")
    assert str(url) == "gs://bucket/runs/a" and str(url / "x.txt") == "gs://bucket/runs/a/x.txt"
    assert str(url.parent) == "gs://bucket/runs" and url.name == "a"
    assert paths.is_remote(url) and paths.is_remote("gs://b") and not paths.is_remote("runs/a")
    assert str(paths.absolute("gs://bucket/x")) == "gs://bucket/x"  # not cwd/gs:/bucket/x
    assert paths.absolute("runs/a") == Path("runs/a").absolute()
    assert str(paths.as_path("runs/a")) == "runs/a"  # relative stays relative


def test_write_read_append_and_remove(root: str) -> None:
    f = paths.as_path(root) / "sub" / "a.txt"
    paths.write_text(f, "one\n")
    paths.append_text(f, "two\n")
    assert f.read_text() == "one\ntwo\n" and f.is_file()
    paths.write_bytes(f, b"0123456789")
    assert paths.read_range(f, 2, 5) == b"234"
    assert [p.name for p in paths.as_path(root).iterdir()] == ["sub"]  # no temporary file left
    assert [p.name for p in f.parent.iterdir()] == ["a.txt"]
    v1 = paths.version(f)
    paths.write_bytes(f, b"changed")
    assert paths.version(f) != v1
    paths.append_text(paths.as_path(root) / "new.jsonl", "{}\n")  # append creates the file
    assert (paths.as_path(root) / "new.jsonl").read_text() == "{}\n"
    paths.remove(paths.as_path(root) / "sub")
    paths.remove(paths.as_path(root) / "not-there")  # nothing there is fine
    assert not f.exists()


def test_files_under_local_file_and_staged_dir(root: str, tmp_path: Path) -> None:
    base = paths.as_path(root)
    for name in ("b.txt", "a/c.txt", "a/d/e.txt"):
        paths.write_text(base / name, name)
    found = paths.files_under(base)
    assert [str(p.relative_to(base)) for p in found] == ["a/c.txt", "a/d/e.txt", "b.txt"]
    with paths.local_file(base / "a" / "c.txt") as local:
        assert isinstance(local, Path) and local.read_text() == "a/c.txt"
    with paths.staged_dir(base / "out") as stage:
        assert isinstance(stage, Path)
        (stage / "x.bin").write_bytes(b"x")
        (stage / "deep").mkdir()
        (stage / "deep" / "y.txt").write_text("y")
    assert (base / "out" / "x.bin").read_bytes() == b"x"
    assert (base / "out" / "deep" / "y.txt").read_text() == "y"


def test_inputs_and_prepared_data_from_a_bucket(gcs: str, tmp_path: Path) -> None:
    """Text, JSONL and gzip from a gs:// folder read as the same files do locally, and data
    prepared into the bucket reads back window for window as the local copy does."""
    from gpt3_jax.data import PreparedData, list_inputs, prepare_data, train_tokenizer
    from gpt3_jax.data.sources import fingerprint, iter_pieces

    texts = {
        "a.txt": b"First document.\nWith two lines.\n",
        "b.jsonl.gz": gzip.compress(b'{"text": "json one"}\n{"text": "json two"}\n'),
        "c/d.txt.gz": gzip.compress(b"zipped, in a subfolder\n"),
        ".hidden/e.txt": b"never read\n",
    }
    for name, data in texts.items():
        paths.write_bytes(f"{gcs}/text/{name}", data)
        (tmp_path / "text" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "text" / name).write_bytes(data)
    remote, local = list_inputs([f"{gcs}/text"]), list_inputs([tmp_path / "text"])
    assert [str(f.path) for f in remote] == [f"{gcs}/text/{n}" for n in ("a.txt", "b.jsonl.gz", "c/d.txt.gz")]
    assert [(f.size, f.jsonl) for f in remote] == [(f.size, f.jsonl) for f in local]
    assert [p.text for p in iter_pieces(remote)] == [p.text for p in iter_pieces(local)]
    assert fingerprint(remote)[0][0] == f"{gcs}/text/a.txt"
    paths.write_bytes(f"{gcs}/text/a.txt", b"rewritten\n")
    assert fingerprint(list_inputs([f"{gcs}/text"]))[0] != fingerprint(remote)[0]  # a new object version

    tok = train_tokenizer(local, 64, f"{gcs}/tok", "char", progress=False)
    assert str(tok.path) == f"{gcs}/tok/tokenizer.model" and tok.path.is_file()
    kw = dict(val_fraction=0.2, progress=False, shard_tokens=16)  # several shards: reads cross them
    there = prepare_data(local, tok, f"{gcs}/prepared", **kw)
    here = prepare_data(local, tok, tmp_path / "prepared", **kw)
    assert len(there.meta["shards"]) > 2
    loaded = PreparedData.load(f"{gcs}/prepared")
    for split in ("train_stream", "val_stream"):
        a, b = getattr(loaded, split)(), getattr(here, split)()
        np.testing.assert_array_equal(a.read(0, len(a)), b.read(0, len(b)))
        np.testing.assert_array_equal(a.read(3, len(a) - 2), b.read(3, len(b) - 2))  # inside shards
    assert json.loads(paths.as_path(f"{gcs}/prepared/metadata.json").read_text())["n_tokens"] > 0


def test_prepare_replaces_its_own_files_only(tmp_path: Path) -> None:
    """Prepared data is complete when metadata.json, written last, is there: an interrupted
    prepare (shards, no marker) is cleared and redone; a folder with other files is refused."""
    from gpt3_jax.data import list_inputs, prepare_data, train_tokenizer
    from gpt3_jax.errors import UserError

    text = tmp_path / "t.txt"
    text.write_text("some text\n" * 50)
    tok = train_tokenizer([text], 64, tmp_path / "tok", "char", progress=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tokens_00000.bin").write_bytes(b"\x00" * 7)  # what a prepare cut short leaves
    (out / "tokens_00003.bin").write_bytes(b"\x00" * 2)
    data = prepare_data(list_inputs([text]), tok, out, progress=False)
    assert sorted(os.listdir(out)) == ["metadata.json", "tokenizer.model", "tokens_00000.bin"]
    assert data.n_train_tokens > 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not prepared data .*notes.txt"):
        prepare_data(list_inputs([text]), tok, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
