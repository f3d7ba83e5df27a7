"""Pieces the benchmarks share: the machine's description (with its load), the steady-state train
step, timing of decode loops interleaved between implementations, memcpy bandwidths (host and
device) and a GEMM rate measured in the same run, and a Hugging Face GPT-2 converted to a gpt3_jax
``LanguageModel``.

Scripts in this folder import it as ``common`` (``python benchmarks/X.py`` puts the folder on
``sys.path``). Every benchmark prints ``machine_info()`` so that a number never travels without
the load it was measured under: on a shared machine PyTorch slows far more under load than XLA.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(**extra: Any) -> dict[str, Any]:
    """Machine, cores, date, library versions and the load average now (plus ``extra``)."""
    import jax

    info: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average": load_average(),
    }
    if "torch" in sys.modules:  # only a benchmark that runs PyTorch names its version
        import torch

        info |= {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if "transformers" in sys.modules:
        info["transformers"] = sys.modules["transformers"].__version__
    return info | extra


def memcpy_bandwidth(size_mb: int = 512, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by numpy copying ``size_mb`` MiB; best of ``repeats``."""
    src = np.ones(size_mb * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def device_copy_bandwidth(size_mb: int = 1024, repeats: int = 5) -> float:
    """Bytes moved (read + write) per second by one jitted copy of a ``size_mb`` MiB array on the
    default device; best of ``repeats``. The accelerator's counterpart of ``memcpy_bandwidth``."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(size_mb * 2**20 // 4, jnp.float32)
    copy = jax.jit(jnp.copy)  # a new buffer: the input is not donated, so XLA must copy it
    copy(x).block_until_ready()
    best = min(timed(lambda: copy(x).block_until_ready()) for _ in range(repeats))
    return 2 * x.nbytes / best


def gemm_rate(m: int, k: int, n: int, dtype: Any = None, repeats: int = 5) -> float:
    """FLOP/s of one jitted [m, k] × [k, n] matmul on the default device; best of ``repeats``.
    The yardstick for a model's FLOP rate: what XLA gets from a plain product of its shapes."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    best = min(timed(lambda: f(a, b).block_until_ready()) for _ in range(repeats))
    return 2 * m * k * n / best


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def train_runner(cfg: Any, seed: int = 0) -> tuple[Callable[[int], float], np.ndarray]:
    """(run k steps → wall seconds, the token ids) for the trainer's own jitted step
    (``training.step.jit_train_step``) of ``cfg`` on one device, on one fixed random batch of
    ids [micro_batches, micro-batch, n_ctx + 1] (inputs and targets are its two shifted views).
    ``run`` waits for the last step's metrics, so its seconds cover the device work."""
    import jax
    import jax.numpy as jnp

    from gpt3_jax.training.setup import setup
    from gpt3_jax.training.state import init_state
    from gpt3_jax.training.step import jit_train_step

    s = setup(cfg, jax.devices()[:1])
    m, t = cfg.train.micro_batches, cfg.model.n_ctx
    ids = np.random.default_rng(seed).integers(0, cfg.model.vocab_size, (m, s.micro, t + 1))
    batch = {"inputs": jnp.asarray(ids[..., :-1], jnp.int32), "targets": jnp.asarray(ids[..., 1:], jnp.int32)}
    with jax.set_mesh(s.mesh):
        box = [init_state(cfg, s.tx, s.shardings)]  # the step donates its state: keep the newest
        step = jit_train_step(s)

    def run(k: int) -> float:
        with jax.set_mesh(s.mesh):
            t0 = time.perf_counter()
            for _ in range(k):
                box[0], metrics = step(box[0], batch)
            jax.block_until_ready(metrics)
            return time.perf_counter() - t0

    return run, ids


def decode_rate(generate: Callable[[int], Any], n: int, best_of: int = 3) -> float:
    """Steps per second of the decode loop alone: (n - 1) / (T(n) - T(1)), so prefill, compile and
    per-call overhead cancel out; each T the fastest of ``best_of`` calls (a load spike in one
    call would otherwise make the difference meaningless for a fast model)."""
    t1 = min(timed(lambda: generate(1)) for _ in range(best_of))
    tn = min(timed(lambda: generate(n)) for _ in range(best_of))
    return (n - 1) / max(tn - t1, 1e-9)


def interleaved_rates(
    generators: dict[str, Callable[[int], Any]], n: int, repeats: int
) -> dict[str, list[float]]:
    """Per repeat, every generator's decode rate in turn (so they share the machine's load)."""
    for generate in generators.values():
        generate(1), generate(n)  # compile / warm up both shapes
    rates: dict[str, list[float]] = {name: [] for name in generators}
    for _ in range(repeats):
        for name, generate in generators.items():
            rates[name].append(decode_rate(generate, n))
    return rates


def converted(hf: Any, scan_layers: bool | None = None) -> Any:
    """A transformers GPT-2 as a gpt3_jax ``LanguageModel``, through the real path: saved,
    ``convert.from_hf``, saved as a checkpoint, ``sampling.load`` (``scan_layers`` None: what
    ``load`` picks for the backend)."""
    from flax import nnx

    from gpt3_jax.checkpoint import save_params
    from gpt3_jax.convert import from_hf
    from gpt3_jax.sampling import load

    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(f"{d}/hf")
        cfg, model = from_hf(f"{d}/hf")
        save_params(f"{d}/ckpt", cfg, nnx.state(model, nnx.Param))
        del model
        return load(f"{d}/ckpt", scan_layers=scan_layers)


def hf_greedy(hf: Any, prompts: np.ndarray) -> Callable[[int], Any]:
    """transformers' greedy ``generate`` of exactly n new tokens from ``prompts`` [b, p]."""
    import torch

    ids = torch.as_tensor(prompts)

    def generate(n: int) -> Any:
        with torch.inference_mode():
            return hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )

    return generate


def decode_comparison(
    lm: Any, hf: Any | None, batch: int, prompt_len: int, new_tokens: int, repeats: int, bandwidth: float
) -> dict[str, Any]:
    """Greedy KV-cache decoding of ``lm`` (and ``hf``, the same weights, unless None) at ``batch``
    from one random prompt per row, timed back to back per repeat; medians, every repeat's rates,
    and the memory-bandwidth bound: one step's bytes (every parameter, plus the keys and values
    of the KV cache at half the generation, local layers holding their window only) ÷
    ``bandwidth`` (bytes read + written per second)."""
    import jax
    from flax import nnx

    from gpt3_jax.model import LayerCache, init_cache

    m = lm.cfg.model
    prompts = np.random.default_rng(0).integers(0, m.vocab_size, (batch, prompt_len))
    generators = {"ours": lambda n: lm.sampler.generate(prompts.tolist(), n)}
    if hf is not None:
        generators["hf"] = hf_greedy(hf, prompts)
    rates = interleaved_rates(generators, new_tokens, repeats)
    ours = float(np.median(rates["ours"]))
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(lm.model, nnx.Param)))
    caches = jax.tree.leaves(
        jax.eval_shape(lambda: init_cache(m, batch, prompt_len + new_tokens // 2)),
        is_leaf=lambda x: isinstance(x, LayerCache),
    )
    step_bytes = param_bytes + sum(2 * c.k.size * c.k.dtype.itemsize for c in caches)
    bound = bandwidth / step_bytes
    row: dict[str, Any] = {"batch": batch, "ours_tok_s": ours * batch, "ours_steps_s": ours}
    row |= {"bound_steps_s": bound, "bandwidth_fraction": ours / bound, "step_bytes": step_bytes}
    row["ours_steps_s_each"] = [round(r, 2) for r in rates["ours"]]
    if hf is not None:
        theirs = float(np.median(rates["hf"]))
        check = lm.sampler.generate(prompts.tolist(), 16).ids
        same = generators["hf"](16)[:, prompt_len:].tolist() == check
        row |= {"hf_tok_s": theirs * batch, "speedup": ours / theirs, "same_greedy_tokens": same}
        row["hf_steps_s_each"] = [round(r, 2) for r in rates["hf"]]
    return row


def rounded(row: dict[str, Any], digits: int = 3) -> dict[str, Any]:
    """``row`` with its floats rounded, for printing."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}


def print_row(row: dict[str, Any], as_json: bool) -> None:
    """``row`` rounded, as one JSON line or one ``key: value`` line per entry."""
    row = rounded(row)
    if as_json:
        print(json.dumps(row))
        return
    width = max(map(len, row))
    for key, value in row.items():
        print(f"{key:>{width}}: {value}")


def child_value(cmd: list[str], cwd: Any) -> float:
    """Run one of a benchmark's own child processes (``cmd``) and return the number on the last
    line of its stdout: a measurement taken in a fresh process, with nothing cached from others."""
    import subprocess

    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=cwd).stdout
    return float(out.strip().splitlines()[-1])


def alternating(measure: Callable[[str], float], names: list[str], repeats: int) -> dict[str, list[float]]:
    """``measure(name)`` for each name in turn, ``repeats`` rounds: name → its measurements. A drift
    of the machine's speed during the rounds then hits every name alike."""
    runs: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            runs[name].append(measure(name))
    return runs


def print_table(row: dict[str, Any], as_json: bool, header: list[str], lines: list[list[str]]) -> None:
    """``row`` as one JSON line (``as_json``), else its ``machine`` entry as JSON and a Markdown
    table of ``header`` and ``lines``, as docs/performance.md has them."""
    if as_json:
        print_row(row, True)
        return
    print(json.dumps(row["machine"]))
    print("| " + " | ".join(header) + " |")
    print("|---|" + "--:|" * (len(header) - 1))
    for cells in lines:
        print("| " + " | ".join(cells) + " |")
