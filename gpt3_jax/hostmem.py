"""Host memory for XLA:CPU runs: keep each step's working memory instead of faulting it in anew.

XLA:CPU allocates one block of temporaries per execution of a jitted function with ``malloc``
(about 1 GB for ``benchmarks/compare_hf.py``'s train step) and frees it when the execution ends.
A block that large is above glibc's mmap threshold (at most 32 MiB): ``malloc`` maps fresh pages
for it and ``free`` unmaps them, so every step page-faults and zero-fills the whole block again
(about 255,000 page faults and half a second of kernel time per step there; docs/performance.md,
"Host memory"). ``keep_cpu_buffers`` stops that:

- glibc serves large blocks from its heap (``M_MMAP_MAX`` 0) and never trims the heap
  (``M_TRIM_THRESHOLD`` at its maximum), so a freed block is there for the next step;
- JAX runs CPU computations on the calling thread (``jax_cpu_enable_async_dispatch`` off), so the
  per-execution block is allocated there, from the main heap: glibc's per-thread arenas are made of
  heaps of at most 64 MiB and map any larger block whatever the settings. The Python loop then
  waits for each step; the data pipeline prefetches in its own threads, so little host work is
  left to overlap;
- XLA:CPU's worker threads still allocate smaller buffers of their own (the packed operands of a
  large matrix product: two of 48 MiB at once for a [4096, 3072] operand). Where those do not fit
  in the worker arena's heap, glibc adds a heap and, by default, unmaps it again when it is empty,
  so every call faults it in anew (about 12,300 faults per call in ``tests/test_hostmem.py``'s
  function on one machine). glibc keeps an empty heap while the top padding (``M_TOP_PAD``) is
  at least the heap size, so it is set to 64 MiB; the main heap then grows in steps of 64 MiB of
  address space, which is only touched when used.

The cost: the process keeps the memory it has used at its peak until it exits. So it applies only
when JAX computes on the CPU (not on GPU or TPU hosts) and only where glibc is the C library. The
``gpt3-jax`` commands that run models (train, sample, eval) call it; code that imports our modules
may call it too, before JAX creates its clients (the first use of a device): afterwards the CPU
client's dispatch mode is fixed and it does nothing. Finding the backend creates the clients, so
on a GPU or TPU host the CPU client (host-side arrays only) is left dispatching on the calling
thread; the accelerator's computations are not affected.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
HEAP_MAX = 64 << 20  # glibc's per-thread heap size on 64-bit (2 x DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_MAX = 2**31 - 1  # mallopt takes an int


def keep_cpu_buffers() -> bool:
    """Keep XLA:CPU's per-step working memory mapped (module docstring). Returns whether it
    applies: JAX computes on the CPU, the C library is glibc, and JAX has not made its clients yet
    (afterwards the dispatch mode is fixed, and the glibc settings alone do not help)."""
    import jax
    from jax._src import xla_bridge  # JAX has no public way to ask whether its clients exist

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)  # read when the CPU client is made
    if jax.default_backend() != "cpu":
        return False
    libc = ctypes.CDLL("libc.so.6")
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_MAX), (M_TOP_PAD, HEAP_MAX))
    return all([bool(libc.mallopt(param, value)) for param, value in settings])  # a list: each one is set


__all__ = ["keep_cpu_buffers"]
