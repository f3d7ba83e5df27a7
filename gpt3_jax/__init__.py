"""gpt3_jax: GPT-3 in JAX and Flax NNX.

The public API, re-exported lazily so that ``import gpt3_jax`` does no work (no JAX import, no
device initialisation, no file I/O) until a name is used::

    from gpt3_jax import GPT, Block, Attention, ModelConfig, DEFAULT_RULES
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # model
    "GPT": "gpt3_jax.model",
    "Block": "gpt3_jax.model",
    "BlockGroup": "gpt3_jax.model",
    "Attention": "gpt3_jax.model",
    "MLP": "gpt3_jax.model",
    "Embed": "gpt3_jax.model",
    "LayerNorm": "gpt3_jax.model",
    "LayerCache": "gpt3_jax.model",
    # configuration
    "Config": "gpt3_jax.config",
    "ModelConfig": "gpt3_jax.config",
    "DataConfig": "gpt3_jax.config",
    "OptimConfig": "gpt3_jax.config",
    "TrainConfig": "gpt3_jax.config",
    "MeshConfig": "gpt3_jax.config",
    "CheckpointConfig": "gpt3_jax.config",
    "RunConfig": "gpt3_jax.config",
    "load_config": "gpt3_jax.config",
    # sharding
    "DEFAULT_RULES": "gpt3_jax.sharding",
    "make_mesh": "gpt3_jax.sharding",
    "logical_to_spec": "gpt3_jax.sharding",
    # checkpoints
    "load_model": "gpt3_jax.checkpoint",
    "UserError": "gpt3_jax.errors",
    # XLA:CPU runs: keep each step's working memory (gpt3_jax.hostmem)
    "keep_cpu_buffers": "gpt3_jax.hostmem",
    # a persistent compilation cache for this process (gpt3_jax.compile_cache)
    "use_compilation_cache": "gpt3_jax.compile_cache",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:  # importlib caches the module: later lookups are cheap
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpt3_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
