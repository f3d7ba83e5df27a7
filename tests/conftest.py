"""Test set-up: 8 simulated CPU devices (set before JAX is imported), float32 everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def program_compilation_cache(tmp_path_factory: pytest.TempPathFactory):
    """``gpt3-jax`` run as a program keeps a compilation cache (``gpt3_jax.compile_cache``); the
    tests' subprocesses keep theirs in the session's temporary folder, not in the user's home.
    This process's JAX read its environment when the test modules imported it: only the
    subprocesses see the variable."""
    import jax  # noqa: F401 - imported before the variable is set

    key = "JAX_COMPILATION_CACHE_DIR"
    old = os.environ.get(key)
    os.environ.setdefault(key, str(tmp_path_factory.getbasetemp() / "program_xla_cache"))
    yield
    if old is None:
        os.environ.pop(key, None)


@pytest.fixture
def shakespeare() -> Path:
    """tiny Shakespeare, as the package ships it (the embedded ``shakespeare`` corpus)."""
    from gpt3_jax.data.corpus import SHAKESPEARE

    return SHAKESPEARE


@pytest.fixture
def tiny_model_config():
    from gpt3_jax.config import ModelConfig

    return ModelConfig(
        n_layer=4, d_model=64, n_head=4, n_ctx=64, vocab_size=300, local_window=8, dtype="float32"
    )


@pytest.fixture(scope="session")
def gpt2_style_tokenizer(tmp_path_factory) -> Path:
    """A folder holding a GPT-2 style ``tokenizer.json``: byte-level BPE, 512 ids, ``<|endoftext|>``
    as id 0, trained offline with the ``tokenizers`` library on tiny Shakespeare and some Python
    source (so it has merges of whitespace with line breaks, as GPT-2's has)."""
    import argparse
    import inspect

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from gpt3_jax.data.corpus import SHAKESPEARE

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [SHAKESPEARE.read_text(encoding="utf-8")[:300_000], inspect.getsource(argparse)]
    tok.train_from_iterator(texts, trainer)
    out = tmp_path_factory.mktemp("gpt2_tok")
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.fixture(scope="session")
def transformers_gpt2(tmp_path_factory, gpt2_style_tokenizer: Path):
    """A random transformers GPT2LMHeadModel with the byte-level BPE as a PreTrainedTokenizerFast,
    saved with save_pretrained, and converted with ``gpt3-jax convert from-hf``."""
    from gpt3_jax.cli import main

    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(gpt2_style_tokenizer / "tokenizer.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # larger than GPT-2's 0.02 init, so that greedy choices are clear-cut
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("transformers")
    model.save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    assert main(["convert", "from-hf", str(root / "gpt2"), str(root / "ckpt")]) == 0
    return model, tokenizer, root


GCS_BUCKET = "gpt3-jax-test"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory):
    """A local Cloud Storage server for the session: ``gcp-storage-emulator`` (the ``test`` extra)
    serving the JSON API on localhost, in memory, with one bucket (tests/gcs_emulator.py). The
    environment points every client at it, in this process and in the processes it starts:
    gcsfs and google-cloud-storage through ``STORAGE_EMULATOR_HOST``, tensorstore (Orbax) through
    ``TENSORSTORE_GCS_HTTP_URL`` with ``GOOGLE_AUTH_TOKEN_FOR_TESTING``. Yields the bucket's URL."""
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("gcp_storage_emulator")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("gcs") / "emulator.log").open("w")
    server = subprocess.Popen(  # the emulator, with the gap that tests/gcs_emulator.py fills
        [sys.executable, str(Path(__file__).parent / "gcs_emulator.py"), str(port), GCS_BUCKET],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://localhost:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
        # The emulator has no storage-layout API, which gcsfs's zonal-bucket probe calls first (and
        # logs a warning for, on every bucket); the probe is for bucket kinds the emulator lacks.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the storage emulator did not start (see {log.name})")
                time.sleep(0.1)
        yield f"gs://{GCS_BUCKET}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def gcs(gcs_emulator: str, request: pytest.FixtureRequest) -> str:
    """A folder of its own in the emulator's bucket for one test: ``gs://BUCKET/<test name>``."""
    import re

    return f"{gcs_emulator}/{re.sub(r'[^A-Za-z0-9_.-]+', '-', request.node.name)}"
