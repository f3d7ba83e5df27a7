"""Data preparation and the grain pipeline: formats, errors, determinism, resume, process sharding."""

import gzip
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from gpt3_jax.cli import main
from gpt3_jax.config import Config, DataConfig, ModelConfig
from gpt3_jax.data import (
    PreparedData,
    Tokenizer,
    corpus_files,
    eval_batches,
    list_inputs,
    prepare_data,
    prepare_training_data,
    to_device,
    train_iterator,
    train_tokenizer,
)
from gpt3_jax.data.corpus import SHAKESPEARE
from gpt3_jax.data.prepared import FORMAT
from gpt3_jax.errors import UserError


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer([SHAKESPEARE], 512, tmp_path_factory.mktemp("tok"), progress=False)


@pytest.fixture(scope="module")
def other_tok(tmp_path_factory) -> Tokenizer:
    lines = SHAKESPEARE.read_text().splitlines()[:5000]
    return train_tokenizer(None, 400, tmp_path_factory.mktemp("other"), lines=lines, progress=False)


def synthetic(
    folder: Path, tok: Tokenizer, n_train: int, n_val: int, shard_tokens: int = 700
) -> PreparedData:
    """Prepared data whose token at stream position k is k: a batch names its windows."""
    folder.mkdir(parents=True, exist_ok=True)
    stream = np.arange(n_train + n_val, dtype=np.uint32)
    shards = []
    for i, start in enumerate(range(0, len(stream), shard_tokens)):
        part = stream[start : start + shard_tokens]
        part.tofile(folder / f"tokens_{i:05d}.bin")
        shards.append({"file": f"tokens_{i:05d}.bin", "tokens": len(part)})
    meta = {
        "format": FORMAT,
        "dtype": "uint32",
        "n_tokens": len(stream),
        "n_train_tokens": n_train,
        "n_val_tokens": n_val,
        "tokenizer": {"sha256": tok.checksum},
        "shards": shards,
    }
    (folder / "metadata.json").write_text(json.dumps(meta))
    (folder / "tokenizer.model").write_bytes(tok.model_bytes())
    return PreparedData.load(folder)


@pytest.fixture
def windows_data(tok, tmp_path) -> PreparedData:
    # 100 windows of 16 tokens (+1), 3 shards: windows cross shard boundaries
    return synthetic(tmp_path / "syn", tok, n_train=100 * 16 + 1, n_val=5 * 16 + 1)


def take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def starts(batches) -> np.ndarray:
    """Window index of every row, in order: [n_batches * rows]."""
    return np.concatenate([b["inputs"][:, 0] // 16 for b in batches])


# --- preparation -------------------------------------------------------------------------------


def test_prepare_shakespeare(tok, tmp_path):
    data = prepare_data(list_inputs([SHAKESPEARE]), tok, tmp_path / "p", val_fraction=0.1, progress=False)
    m = data.meta
    assert m["dtype"] == "uint16" and m["tokenizer"]["sha256"] == tok.checksum
    assert data.n_train_tokens + data.n_val_tokens == m["n_tokens"]
    assert abs(data.n_val_tokens - 0.1 * m["n_tokens"]) <= 1
    train, val = data.train_stream(), data.val_stream()
    stream = np.concatenate([train.read(0, len(train)), val.read(0, len(val))])
    assert stream[-1] == tok.eot_id and (stream == tok.eot_id).sum() == 1  # one document
    assert tok.decode(stream) == SHAKESPEARE.read_text()
    assert json.loads((data.dir / "metadata.json").read_text())["shards"][0]["file"].endswith(".bin")


def test_formats_folders_and_invalid_utf8(tok, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"caf\xc3\xa9 ok\nbad \xff\xfe byte\n")  # 2 invalid bytes
    with gzip.open(src / "sub" / "b.jsonl.gz", "wt") as f:
        f.write(
            json.dumps({"text": "first record"}) + "\n\n" + json.dumps({"text": "second", "id": 2}) + "\n"
        )
    with gzip.open(src / "c.txt.gz", "wt") as f:
        f.write("gzipped text")
    (src / "sub" / "image.png").write_bytes(b"\x89PNG\x00\x00binary")  # skipped: found in a folder
    (src / ".hidden.txt").write_text("never read")
    data = prepare_data(list_inputs([src]), tok, tmp_path / "p", val_fraction=0.0, progress=False)
    assert data.meta["invalid_utf8_bytes"] == 2
    assert data.meta["skipped_binary_files"] == [str(src / "sub" / "image.png")]
    stream = data.train_stream().read(0, data.n_train_tokens)
    docs = [tok.decode(d) for d in np.split(stream, np.flatnonzero(stream == tok.eot_id) + 1)[:-1]]
    assert docs == ["café ok\nbad \ufffd\ufffd byte\n", "gzipped text", "first record", "second"]


def test_parallel_equals_serial_and_shards(tok, tmp_path):
    files = list_inputs([SHAKESPEARE])
    one = prepare_data(files, tok, tmp_path / "one", workers=1, progress=False)
    many = prepare_data(
        files, tok, tmp_path / "many", workers=2, chunk_bytes=200_000, shard_tokens=100_000, progress=False
    )
    assert len(many.meta["shards"]) > 1 and one.meta["n_tokens"] == many.meta["n_tokens"]
    a, b = one.train_stream(), many.train_stream()
    assert np.array_equal(a.read(0, len(a)), b.read(0, len(b)))
    assert np.array_equal(a.read(99_990, 100_010), b.read(99_990, 100_010))  # across a shard boundary


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad_jsonl"])
def test_prepare_errors(case, tok, tmp_path, capfd):
    bad = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty.txt",
        "binary": tmp_path / "x.bin",
        "bad_jsonl": tmp_path / "x.jsonl",
    }[case]
    if case == "empty":
        bad.write_text("")
    elif case == "binary":
        bad.write_bytes(b"\x7fELF\x00\x00\x01")
    elif case == "bad_jsonl":
        bad.write_text('{"text": "ok"}\n{"txt": "no text field"}\n')
    rc = main(
        ["data", "prepare", "--input", str(bad), "--tokenizer", str(tok.path), "--out", str(tmp_path / "o")]
    )
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ")
    assert {"missing": "not found", "empty": "no text", "binary": "binary", "bad_jsonl": ":2:"}[case] in err[
        -1
    ]
    assert not (tmp_path / "o").exists()


def test_checksum_mismatch(tok, other_tok, windows_data, capfd):
    with pytest.raises(UserError, match="another tokenizer") as exc:
        PreparedData.load(windows_data.dir, other_tok)
    assert "\n" not in str(exc.value)
    assert main(["data", "info", str(windows_data.dir), "--tokenizer", str(other_tok.path)]) == 2
    assert "another tokenizer" in capfd.readouterr().err
    assert main(["data", "info", str(windows_data.dir), "--tokenizer", str(tok.path)]) == 0


# --- training batches --------------------------------------------------------------------------


def test_windows_and_targets(windows_data):
    batch = next(train_iterator(windows_data, batch_size=8, seq_len=16, seed=0))
    assert batch["inputs"].shape == batch["targets"].shape == (8, 16)
    assert batch["inputs"].dtype == np.int32
    assert np.array_equal(batch["targets"], batch["inputs"] + 1)  # next token: position k holds k
    assert np.all(batch["inputs"][:, 0] % 16 == 0)  # windows start at multiples of seq_len


def test_seed_determines_order_and_epochs_cover_every_window(windows_data):
    a = starts(take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=0), 25))
    b = starts(take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=0), 25))
    c = starts(take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=1), 25))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:100], c[:100])
    # 200 rows = exactly 2 epochs of 100 windows; the epoch boundary falls inside batch 13
    assert sorted(a[:100]) == list(range(100)) and sorted(a[100:]) == list(range(100))
    assert not np.array_equal(a[:100], a[100:])  # reshuffled
    assert not np.array_equal(a[:100], np.arange(100))  # shuffled at all


def test_processes_slice_the_global_batch(windows_data):
    one = take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=3), 30)
    for count in (2, 4):
        its = [
            train_iterator(
                windows_data, batch_size=8, seq_len=16, seed=3, process_index=p, process_count=count
            )
            for p in range(count)
        ]
        per = [take(it, 30) for it in its]
        for step in range(30):
            parts = [per[p][step] for p in range(count)]
            assert all(part["inputs"].shape == (8 // count, 16) for part in parts)
            for key in ("inputs", "targets"):
                assert np.array_equal(np.concatenate([part[key] for part in parts]), one[step][key])
        if count == 2:  # an epoch (batches 0-11 = 96 rows): disjoint slices, no window twice
            rows0, rows1 = starts(per[0][:12]), starts(per[1][:12])
            assert not set(rows0) & set(rows1) and len(set(rows0) | set(rows1)) == 96


def test_resume_mid_epoch(windows_data):
    full = take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=5), 20)
    it = train_iterator(windows_data, batch_size=8, seq_len=16, seed=5)
    take(it, 7)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    assert state["rows"] == 56
    resumed = train_iterator(windows_data, batch_size=8, seq_len=16, seed=5)
    resumed.set_state(state)
    for got, want in zip(take(resumed, 13), full[7:], strict=True):
        assert np.array_equal(got["inputs"], want["inputs"])
    # resuming on 2 processes from a 1-process state continues the same global sequence
    halves = []
    for p in range(2):
        part = train_iterator(
            windows_data, batch_size=8, seq_len=16, seed=5, process_index=p, process_count=2
        )
        part.set_state(state)
        halves.append(take(part, 3))
    for step in range(3):
        both = np.concatenate([halves[0][step]["inputs"], halves[1][step]["inputs"]])
        assert np.array_equal(both, full[7 + step]["inputs"])


def test_state_from_other_settings_is_refused(windows_data):
    it = train_iterator(windows_data, batch_size=8, seq_len=16, seed=5)
    next(it)
    other = train_iterator(windows_data, batch_size=8, seq_len=16, seed=6)
    with pytest.raises(UserError, match="seed"):
        other.set_state(it.get_state())


def test_grain_workers_give_the_same_batches(windows_data):
    want = take(train_iterator(windows_data, batch_size=8, seq_len=16, seed=2), 6)
    it = train_iterator(windows_data, batch_size=8, seq_len=16, seed=2, workers=2)
    try:
        got = take(it, 3)
        state = it.get_state()
    finally:
        it.close()
    resumed = train_iterator(windows_data, batch_size=8, seq_len=16, seed=2, workers=2)
    resumed.set_state(state)
    try:
        got += take(resumed, 3)
    finally:
        resumed.close()
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g["inputs"], w["inputs"])


def test_batch_not_divisible_by_processes(windows_data):
    with pytest.raises(UserError, match="not divisible"):
        train_iterator(windows_data, batch_size=6, seq_len=16, seed=0, process_index=0, process_count=4)


# --- evaluation batches ------------------------------------------------------------------------


def test_eval_batches_in_order_cycling_and_sliced(windows_data):
    n_train = windows_data.n_train_tokens
    one = list(eval_batches(windows_data, batch_size=4, seq_len=16, n_batches=3))
    assert len(one) == 3
    rows = np.concatenate([b["inputs"][:, 0] for b in one])
    # 5 validation windows, cycled: 0 1 2 3 4 0 1 ...
    assert list((rows - n_train) // 16) == [i % 5 for i in range(12)]
    assert np.array_equal(one[0]["targets"], one[0]["inputs"] + 1)
    halves = [
        list(
            eval_batches(
                windows_data, batch_size=4, seq_len=16, n_batches=3, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    for step in range(3):
        both = np.concatenate([halves[0][step]["inputs"], halves[1][step]["inputs"]])
        assert np.array_equal(both, one[step]["inputs"])


def test_short_validation_split_is_an_error(tok, tmp_path):
    data = synthetic(tmp_path / "short", tok, n_train=200, n_val=10)
    with pytest.raises(UserError, match="data.val_fraction"):
        next(eval_batches(data, batch_size=2, seq_len=16, n_batches=1))


def test_to_device_shards_the_batch(windows_data):
    import jax

    from gpt3_jax.config import MeshConfig
    from gpt3_jax.sharding import make_mesh

    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    batch = next(train_iterator(windows_data, batch_size=8, seq_len=16, seed=0))
    arrays = to_device(batch, mesh)
    assert arrays["inputs"].shape == (8, 16) and len(arrays["inputs"].addressable_shards) == 8
    assert arrays["inputs"].sharding.spec[0] == ("data", "fsdp")
    assert np.array_equal(jax.device_get(arrays["targets"]), batch["targets"])


# --- the train command's entry point -----------------------------------------------------------


def small_config(tmp_path: Path, **data) -> Config:
    model = ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32, vocab_size=512)
    return Config(model=model, data=DataConfig(max_corpus_bytes=200_000, vocab_size=400, **data))


def test_stdlib_corpus_is_sorted_and_capped():
    files = corpus_files("stdlib", 200_000)
    rel = [f.path.as_posix() for f in files]
    assert rel == sorted(rel) and 0 < sum(f.size for f in files) <= 200_000
    assert not any("site-packages" in r or "/test/" in r for r in rel)
    with pytest.raises(UserError, match="data.corpus"):
        corpus_files("nope")


def test_shakespeare_corpus_ships_with_the_package():
    from gpt3_jax.config import load_config
    from gpt3_jax.data.corpus import corpus_fingerprint

    (f,) = corpus_files("shakespeare")
    assert f.path == SHAKESPEARE and len(f.path.read_text(encoding="utf-8")) == 1_115_394
    digest = hashlib.sha256(f.path.read_bytes()).hexdigest()  # the cache key: the same on every machine
    listing = [["tinyshakespeare.txt", f.size, digest]]
    assert corpus_fingerprint("shakespeare", 0, [f]) == ["shakespeare", 0, listing]
    preset = load_config(Path(__file__).resolve().parents[1] / "configs" / "shakespeare-char.yaml")
    assert preset.data.corpus == "shakespeare" and not preset.data.input


def test_prepare_training_data_caches_and_waits(tmp_path):
    cfg = small_config(tmp_path)
    results: list = []
    # process 1 starts first: it must wait for process 0's folders, then load them (a daemon with a
    # timeout, so that a failure in process 0 cannot hang the test session)
    waiter = threading.Thread(
        target=lambda: results.append(prepare_training_data(cfg, tmp_path, process_index=1, timeout_s=120)),
        daemon=True,
    )
    waiter.start()
    data = prepare_training_data(cfg, tmp_path, progress=False)
    waiter.join(timeout=60)
    assert results and results[0].dir == data.dir and results[0].tokenizer.checksum == data.tokenizer.checksum
    assert data.dir.parent == tmp_path / "data" and data.tokenizer.vocab_size == 400
    assert data.n_val_tokens > 0 and data.n_train_tokens > 50 * data.n_val_tokens
    stamp = os.stat(data.dir / "metadata.json").st_mtime_ns
    again = prepare_training_data(cfg, tmp_path, progress=False)  # cached: nothing rebuilt
    assert again.dir == data.dir and os.stat(data.dir / "metadata.json").st_mtime_ns == stamp
    # an already-prepared folder as data.input, checked against data.tokenizer
    assert (
        prepare_training_data(cfg.replace(data=DataConfig(input=(str(data.dir),))), tmp_path).dir == data.dir
    )


def test_prepare_training_data_errors(tok, tmp_path):
    with pytest.raises(UserError, match=r"timed out .* process 0"):
        prepare_training_data(small_config(tmp_path), tmp_path, process_index=1, timeout_s=0.5)
    cfg = small_config(tmp_path, input=(str(SHAKESPEARE),), tokenizer=str(tok.path))
    small = cfg.replace(model=ModelConfig(n_layer=2, d_model=32, n_head=2, n_ctx=32, vocab_size=300))
    with pytest.raises(UserError, match="512 tokens but model.vocab_size is 300"):
        prepare_training_data(small, tmp_path)
    with pytest.raises(UserError, match="not found"):
        prepare_training_data(small_config(tmp_path, input=(str(tmp_path / "none"),)), tmp_path)
