"""keep_cpu_buffers: XLA:CPU's per-execution working memory stays mapped between executions."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from gpt3_jax.cli import main

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc on Linux only"
)

# A jitted function whose temporaries (~200 MB) are far above glibc's largest mmap threshold
# (32 MiB); page faults per call, after two warm-up calls, as JSON.
SCRIPT = """
import json, resource, sys
import jax, jax.numpy as jnp
from gpt3_jax.hostmem import keep_cpu_buffers
if sys.argv[1] == "late":
    jnp.zeros(1).block_until_ready()  # JAX's clients exist: too late to change the dispatch mode
kept = keep_cpu_buffers() if sys.argv[1] in ("keep", "late") else False
f = jax.jit(lambda x: jnp.tanh(jnp.tanh(x @ x.T) @ x).sum())
x = jnp.ones((4096, 3072), jnp.float32)
f(x).block_until_ready(); f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(x).block_until_ready()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({"kept": kept, "faults_per_call": (after - before) / 3}))
"""

# What XLA:CPU's worker threads do in a large matrix product: two 48 MiB blocks at once (the packed
# operands), written and freed, in a thread other than the main one; page faults per iteration
# after two warm-up iterations, as JSON. More than one such block does not fit in the thread
# arena's first heap (64 MiB); a check machine faulted 12,382 times per call of SCRIPT's function
# before the heaps were kept.
THREAD_SCRIPT = """
import ctypes, json, resource, sys, threading
from gpt3_jax.hostmem import keep_cpu_buffers
kept = keep_cpu_buffers() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
n, faults = 48 << 20, []
def work():
    for i in range(5):
        if i == 2:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        blocks = [libc.malloc(n), libc.malloc(n)]
        for b in blocks:
            libc.memset(b, 1, n)
        for b in blocks:
            libc.free(b)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps({"kept": kept, "faults_per_call": (faults[1] - faults[0]) / 3}))
"""


def _faults(mode: str, script: str = SCRIPT) -> dict:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_cpu_buffers_stops_the_per_call_page_faults() -> None:
    plain, kept = _faults("plain"), _faults("keep")
    # 4096 x 4096 float32 temporaries alone are 16,384 pages: without the setting each call maps
    # them anew; with it the freed block is reused
    assert plain["faults_per_call"] > 10_000, plain
    assert kept["kept"] is True
    assert kept["faults_per_call"] < 1_000, kept


def test_keep_cpu_buffers_keeps_the_worker_threads_heaps() -> None:
    plain, kept = _faults("plain", THREAD_SCRIPT), _faults("keep", THREAD_SCRIPT)
    assert plain["faults_per_call"] > 10_000, plain  # 2 x 12,288 pages mapped anew per iteration
    assert kept["kept"] is True
    assert kept["faults_per_call"] < 1_000, kept


def test_keep_cpu_buffers_says_when_it_comes_too_late() -> None:
    assert _faults("late")["kept"] is False


def test_only_the_program_changes_its_process(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Run as ``gpt3-jax`` (argv None) the model commands call keep_cpu_buffers, unless given
    ``--plain-host-memory``; ``main([...])`` from Python leaves the caller's process alone."""
    import gpt3_jax.hostmem

    calls: list[int] = []
    monkeypatch.setattr(gpt3_jax.hostmem, "keep_cpu_buffers", lambda: calls.append(1) or True)
    missing = str(tmp_path / "no-such-checkpoint")
    assert main(["sample", "--checkpoint", missing, "--prompt", "x"]) == 2
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["gpt3-jax", "sample", "--checkpoint", missing, "--prompt", "x"])
    assert main() == 2
    assert calls == [1]
    monkeypatch.setattr(sys, "argv", sys.argv + ["--plain-host-memory"])
    assert main() == 2
    assert calls == [1]
