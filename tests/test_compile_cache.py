"""The program's persistent compilation cache (``gpt3_jax.compile_cache``): where it goes, when JAX's
own variables decide, and that a second ``gpt3-jax train`` loads its programs and trains the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from test_training import cli_args, losses, make_text_data

from gpt3_jax.compile_cache import MAX_BYTES, chosen_dir, host_cpu, use_compilation_cache

CPUINFO = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Some CPU
flags\t\t: fpu sse2 {extra}

"""


def test_the_default_folder_is_under_the_user_cache_and_per_host_cpu() -> None:
    cpu = host_cpu()
    assert chosen_dir({"HOME": "/h"}) == Path("/h/.cache/gpt3_jax/compiled") / cpu
    assert chosen_dir({"HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/x/gpt3_jax/compiled") / cpu


@pytest.mark.parametrize(
    "environ",
    [
        {"JAX_COMPILATION_CACHE_DIR": "gs://bucket/xla"},  # JAX configures its own folder
        {"JAX_COMPILATION_CACHE_DIR": ""},  # set, empty: no folder
        {"JAX_COMPILATION_CACHE_DIR": "", "XDG_CACHE_HOME": "/x"},
    ],
)
def test_jax_variables_decide_when_set(environ: dict[str, str]) -> None:
    assert chosen_dir({"HOME": "/h", **environ}) is None


def test_jax_cache_turned_off_makes_no_folder(tmp_path: Path) -> None:
    """``JAX_ENABLE_COMPILATION_CACHE=false`` reaches us as JAX's parsed flag."""
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        assert use_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)}) is None
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    assert list(tmp_path.iterdir()) == []


def test_host_cpu_tells_instruction_sets_apart(tmp_path: Path) -> None:
    a, b, a2 = tmp_path / "a", tmp_path / "b", tmp_path / "a2"
    a.write_text(CPUINFO.format(n=0, extra="avx2") + CPUINFO.format(n=1, extra="avx2"))
    b.write_text(CPUINFO.format(n=0, extra="avx2 avx512f"))
    a2.write_text(CPUINFO.format(n=0, extra="avx2"))
    assert host_cpu(str(a)) == host_cpu(str(a2)) != host_cpu(str(b))
    assert host_cpu(str(tmp_path / "missing")).startswith(f"{os.uname().machine}-")


def test_a_folder_that_cannot_be_made_is_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    before = jax.config.jax_compilation_cache_dir
    assert use_compilation_cache({"XDG_CACHE_HOME": str(blocker)}) is None
    assert jax.config.jax_compilation_cache_dir == before


@pytest.fixture
def jax_cache_config():
    """Puts back the process's cache settings that ``use_compilation_cache`` changes."""
    names = (
        "jax_compilation_cache_dir",
        "jax_compilation_cache_max_size",
        "jax_persistent_cache_min_compile_time_secs",
    )
    before = {n: getattr(jax.config, n) for n in names}
    yield
    for n, v in before.items():
        jax.config.update(n, v)


def test_the_default_folder_is_size_limited_unless_jax_says(tmp_path: Path, jax_cache_config) -> None:
    assert use_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)}) is not None
    assert jax.config.jax_compilation_cache_max_size == MAX_BYTES
    jax.config.update("jax_compilation_cache_max_size", -1)
    use_compilation_cache({"XDG_CACHE_HOME": str(tmp_path), "JAX_COMPILATION_CACHE_MAX_SIZE": "-1"})
    assert jax.config.jax_compilation_cache_max_size == -1


def test_a_second_train_loads_its_programs_and_trains_the_same(tmp_path: Path) -> None:
    (tmp_path / "text").mkdir()
    data = make_text_data(tmp_path / "text")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env |= {"JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "xdg"), "JAX_LOG_COMPILES": "1"}
    logs = []
    for name in ("a", "b"):
        args = cli_args(tmp_path / name, data, "train.steps=4", "checkpoint.every=0", "--no-progress")
        result = subprocess.run(
            [sys.executable, "-m", "gpt3_jax", *args], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
        logs.append(result.stderr)
    folder = tmp_path / "xdg" / "gpt3_jax" / "compiled" / host_cpu()
    names = [p.name for p in folder.iterdir()]
    assert any(n.startswith("jit_train_step-") and n.endswith("-cache") for n in names)
    # the size limit is on: JAX's LRU cache keeps an access time beside each entry, and a lock
    assert ".lockfile" in names
    assert any(n.startswith("jit_train_step-") and n.endswith("-atime") for n in names)
    hit = "Persistent compilation cache hit for 'jit_train_step'"
    assert hit not in logs[0] and hit in logs[1]
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == [1, 2, 3, 4] and a == b
