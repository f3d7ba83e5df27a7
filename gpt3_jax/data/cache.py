"""What ``gpt3-jax train`` calls: from a config to prepared data, training a tokenizer if needed.

Both the tokenizer and the token stream are cached under ``data.cache_dir`` (default
``<workdir>/data``) in folders named by a hash of what they are made from, so a second run reuses
them and a changed input makes new ones. The cache may be a local folder or a ``gs://`` URL. With
several JAX processes on shared storage, only process 0 builds; the others wait for what marks the
work done (the tokenizer file, written atomically; the prepared data's ``metadata.json``, written
last) to appear.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from gpt3_jax import paths
from gpt3_jax.config import Config
from gpt3_jax.data.corpus import corpus_files, corpus_fingerprint
from gpt3_jax.data.prepare import prepare_data, summary
from gpt3_jax.data.prepared import METADATA, PreparedData, is_prepared
from gpt3_jax.data.sources import fingerprint, list_inputs
from gpt3_jax.data.tokenizer import Tokenizer, load_tokenizer
from gpt3_jax.data.tokenizer_spm import SPM_FILE, train_tokenizer
from gpt3_jax.errors import UserError

_POLL_S = 1.0


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _wait_for(marker: paths.Path, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if time.monotonic() > deadline:
            raise UserError(
                f"timed out after {timeout_s:.0f}s waiting for process 0 to write {marker} ({what}); "
                "check process 0's log, and that all processes share data.cache_dir"
            )
        time.sleep(_POLL_S)


def _check_vocab(tokenizer: Tokenizer, cfg: Config) -> None:
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise UserError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is "
            f"{cfg.model.vocab_size}; "
            f"set model.vocab_size={tokenizer.vocab_size} (or more), or train a smaller tokenizer "
            f"(data.vocab_size<={cfg.model.vocab_size})"
        )


def check_training_data(cfg: Config) -> None:
    """What ``prepare_training_data`` would refuse, found before a run writes anything: inputs that
    do not exist, a named input that is binary or not gzip (its first piece is read), a tokenizer
    that does not load, is larger than the model's vocabulary or is not the one prepared data was
    made with. Problems deeper inside a file still surface while the data is prepared."""
    from gpt3_jax.data.sources import iter_pieces

    d = cfg.data
    if len(d.input) == 1 and is_prepared(d.input[0]):
        _check_vocab(PreparedData.load(d.input[0], d.tokenizer or None).tokenizer, cfg)
        return
    if d.input:
        for f in list_inputs(d.input):
            if f.explicit:
                pieces = iter_pieces([f])
                next(pieces, None)
                pieces.close()
    if d.tokenizer:
        _check_vocab(load_tokenizer(d.tokenizer), cfg)


def prepare_training_data(
    cfg: Config,
    workdir: paths.PathLike,
    *,
    process_index: int = 0,
    timeout_s: float = 3600.0,
    progress: bool = True,
) -> PreparedData:
    """Prepared data for ``cfg``: built (by process 0) or taken from the cache.

    ``data.input`` may also name one already-prepared folder, used as it is (its tokenizer must
    match ``data.tokenizer`` when that is set).
    """
    d = cfg.data
    if len(d.input) == 1 and is_prepared(d.input[0]):
        data = PreparedData.load(d.input[0], d.tokenizer or None)
        _check_vocab(data.tokenizer, cfg)
        return data
    if d.input:
        files = list_inputs(d.input)
        source_key: Any = ["files", fingerprint(files)]
    else:
        files = corpus_files(d.corpus, d.max_corpus_bytes)
        source_key = ["corpus", corpus_fingerprint(d.corpus, d.max_corpus_bytes, files)]
    cache = paths.as_path(d.cache_dir) if d.cache_dir else paths.as_path(workdir) / "data"
    builder = process_index == 0

    if d.tokenizer:
        tokenizer = load_tokenizer(d.tokenizer)
    else:
        vocab = d.vocab_size or cfg.model.vocab_size
        tok_dir = cache / f"tokenizer-{d.tokenizer_type}-{vocab}-{_key(source_key, d.tokenizer_type, vocab)}"
        tok_file = tok_dir / SPM_FILE
        if not tok_file.is_file():
            if builder:  # the model file is written atomically: the others see all of it or nothing
                train_tokenizer([f.path for f in files], vocab, tok_dir, d.tokenizer_type, progress=progress)
            else:
                _wait_for(tok_file, "the tokenizer", timeout_s)
        tokenizer = load_tokenizer(tok_file)
    _check_vocab(tokenizer, cfg)

    data_dir = cache / f"tokens-{_key(source_key, tokenizer.checksum, d.val_fraction)}"
    if not (data_dir / METADATA).is_file():
        if builder:
            data = prepare_data(
                files, tokenizer, data_dir, val_fraction=d.val_fraction, sources=source_key, progress=progress
            )
            if progress:
                print(summary(data))
            return data
        _wait_for(data_dir / METADATA, "the prepared data", timeout_s)
    return PreparedData.load(data_dir, tokenizer)
