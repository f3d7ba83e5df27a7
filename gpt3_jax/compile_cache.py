"""A persistent compilation cache for the ``gpt3-jax`` program: a rerun skips XLA's compiles.

JAX can keep the executables XLA compiles on disk and load them the next time the same program
is compiled with the same JAX, flags and devices (its persistent compilation cache; off unless
told where). The ``gpt3-jax`` commands that run models (train, eval, sample) turn it on when they
run as the program, as MaxText does; code that calls ``gpt3_jax.cli.main`` or our modules from
Python configures its own process (``jax.config.update("jax_compilation_cache_dir", ...)``).

Where: ``$XDG_CACHE_HOME/gpt3_jax/compiled/<host CPU>/`` (``~/.cache/...`` without XDG_CACHE_HOME). The
folder is per host CPU because JAX's cache key names the device kind but not the host's
instruction set, and XLA:CPU compiles for the CPU it runs on: a home folder shared by machines
of different CPUs must not hand one's executables to another. JAX's own environment variables
decide when they are set: ``JAX_COMPILATION_CACHE_DIR`` (another folder, ``gs://`` too; empty: none),
``JAX_ENABLE_COMPILATION_CACHE=false`` (no cache), ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS``
(which compiles are kept: here those of at least ``MIN_COMPILE_S``, JAX's default is 1 s),
``JAX_COMPILATION_CACHE_MAX_SIZE`` (bytes; -1: no limit). The default folder holds at most
``MAX_BYTES``, the least recently used programs evicted first (JAX's LRU cache, which keeps an
access-time file beside each entry and a lock file; hence a folder of its own, not one an
unlimited cache wrote without access times). The folder can be deleted at any time. As JAX's
documentation warns, whoever can write to the folder can make the program run code: keep it
private.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping
from pathlib import Path

MIN_COMPILE_S = 0.1  # a compile this long is worth a file: the eval step and sampler's (~0.5 s) too
MAX_BYTES = 2 << 30  # the default folder's limit; the preset's 7 programs take 0.7 MiB (performance.md)


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """A short name for this host's CPU: architecture and a digest of its model and feature flags."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough: a machine's cores are alike
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:  # not Linux
        pass
    described = "|".join(
        fields.get(k, "") for k in ("vendor_id", "cpu family", "model", "model name", "flags", "Features")
    )
    described = described if described.strip("|") else platform.processor()
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def default_dir(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME") or os.path.expanduser("~")
    base = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return Path(base) / "gpt3_jax" / "compiled" / host_cpu()


def chosen_dir(environ: Mapping[str, str]) -> Path | None:
    """The folder the program should set, or None where JAX's own setting decides
    (``JAX_COMPILATION_CACHE_DIR`` is set: its folder, or none when empty)."""
    if "JAX_COMPILATION_CACHE_DIR" in environ:
        return None
    return default_dir(environ)


def use_compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Turn the cache on for this process (call it before the first compile); returns the folder
    in use, or None. Off where JAX's ``jax_enable_compilation_cache`` is (JAX parses
    ``JAX_ENABLE_COMPILATION_CACHE``). A default folder that cannot be created is skipped: the run
    goes on without. The default folder is limited to ``MAX_BYTES`` unless
    ``JAX_COMPILATION_CACHE_MAX_SIZE`` says otherwise; a folder of the user's keeps JAX's default
    (no limit), since JAX's eviction keeps files of its own beside the entries."""
    import jax

    if not jax.config.jax_enable_compilation_cache:
        return None
    folder = chosen_dir(environ)
    if folder is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        if not os.access(folder, os.W_OK | os.X_OK):
            return None
        jax.config.update("jax_compilation_cache_dir", str(folder))
        if "JAX_COMPILATION_CACHE_MAX_SIZE" not in environ:
            jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    return jax.config.jax_compilation_cache_dir or None
