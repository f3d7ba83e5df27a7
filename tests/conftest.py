"""Test set-up: 8 simulated CPU devices (set before JAX is imported), float32 everywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


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
