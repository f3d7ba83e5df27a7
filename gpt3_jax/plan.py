"""The memory planner: compile the real train step ahead of time and read off what it needs.

``compile_plan(cfg)`` builds the abstract train state (shapes only), gives it the shardings the
trainer gives it, and lowers and compiles ``jit_train_step`` — the very function the trainer
runs — for one full batch (``train.micro_batches`` micro-batches, no ramp). Nothing is allocated:
the figures come from XLA's buffer assignment (``compiled.memory_analysis()``) and cost model
(``compiled.cost_analysis()``), plus the shard shapes of the sharded abstract state.

On a CPU-only machine the devices are simulated (``--xla_force_host_platform_device_count``), so
the compiler is XLA:CPU's. Its buffer assignment is a faithful picture of what is live at once
(state, gradients, remat-saved activations, the largest temporaries), but fusion decisions and
therefore the exact temporary size differ from a TPU's or GPU's compiler; treat the numbers as
an estimate, not a guarantee. XLA:CPU also holds some bfloat16 buffers in float32 (at 175B the
layer-stacked residuals that remat saves: 18 GiB where a TPU would hold 9), so it errs high.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

from gpt3_jax.config import Config

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one train step needs per device. Byte counts are per device unless named global.

    ``per_device_bytes``: ``params`` and ``optimizer`` (shard sizes of the train state),
    ``temp`` (XLA temporaries: gradients, saved activations, workspace), ``argument``,
    ``output`` and ``alias`` (XLA's, the donated state is aliased), and ``total`` =
    argument + output − alias + temp, the peak the step's buffers occupy.
    ``flops_per_step`` is XLA's cost analysis of one device's program. XLA counts a loop body
    once, not once per trip, so with scanned layers and micro-batches it covers one layer group
    of one micro-batch (plus what is outside the loops): compare compiled programs with it, not
    hardware. ``flops_per_step_analytic`` is ``gpt3_jax.info``'s 6N-style figure for the whole
    step on all devices (no remat recompute): the one to compute MFU and step time from.
    """

    devices: int
    slices: int  # mesh.dcn_data: the data axis spans this many slices
    mesh: dict[str, int]
    dtype: str
    remat: str
    batch_size: int
    micro_batches: int
    seq_len: int
    sequences_per_device: float  # per micro-batch: batch / micro_batches / devices
    per_device_bytes: dict[str, int]
    flops_per_step: float
    flops_per_step_analytic: float
    params: int
    lower_seconds: float
    compile_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def planned_config(cfg: Config) -> Config:
    """The config the plan compiles: ``model.dtype=auto`` becomes bfloat16, as on an accelerator
    (on CPU ``auto`` means float32, which would double every activation)."""
    if cfg.model.dtype == "auto":
        return cfg.replace(model=dataclasses.replace(cfg.model, dtype="bfloat16"))
    return cfg


def shard_bytes(tree: Any) -> int:
    """Bytes one device holds of a pytree of sharded abstract arrays (``ShapeDtypeStruct`` with
    ``.sharding``; leaves without one count whole)."""
    import jax

    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
        total += math.prod(shape) * leaf.dtype.itemsize
    return total


def _flops(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, Sequence):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _analytic_flops(cfg: Config) -> tuple[int, float]:
    """Parameter count and the 6N-style model FLOPs of one full step (all devices)."""
    from gpt3_jax.info import count

    info = count(cfg.model)
    return info.params, info.model_flops_per_token * cfg.train.batch_size * cfg.model.n_ctx


def compile_plan(cfg: Config, devices: Sequence[Any] | None = None, progress: bool = False) -> Plan:
    """Lower and compile the trainer's ``jit_train_step`` for ``cfg`` on ``devices`` (default all)
    and measure it. Raises ``UserError`` for a mesh that does not fit the devices or a batch that
    does not split over the data-parallel shards."""
    import jax
    from tqdm import tqdm

    from gpt3_jax import sharding
    from gpt3_jax.training.setup import setup
    from gpt3_jax.training.step import jit_train_step

    cfg = planned_config(cfg)
    devices = list(devices if devices is not None else jax.devices())
    s = setup(cfg, devices)  # the trainer's own: mesh, rules, abstract state, shardings, batch check
    bar = tqdm(total=3, desc="plan", unit="stage", disable=not progress, leave=False)
    bar.set_postfix_str("abstract state")
    state = sharding.attach(s.abstract, s.shardings)
    batch = s.abstract_batch()
    m, b, t = cfg.train.micro_batches, s.micro, cfg.model.n_ctx
    bar.update()

    bar.set_postfix_str("lower")
    start = time.perf_counter()
    with jax.set_mesh(s.mesh):
        lowered = jit_train_step(s).lower(state, batch)
    lower_seconds = time.perf_counter() - start
    bar.update()

    bar.set_postfix_str("compile")
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_seconds = time.perf_counter() - start
    bar.update()
    bar.close()

    mem = compiled.memory_analysis()
    arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    per_device = {
        "params": shard_bytes(state.params),
        "optimizer": shard_bytes(state.opt_state),
        "temp": temp,
        "argument": arg,
        "output": out,
        "alias": alias,
        "total": arg + out - alias + temp,
    }
    n_params, analytic = _analytic_flops(cfg)
    return Plan(
        devices=len(devices),
        slices=cfg.mesh.dcn_data,
        mesh=dict(s.mesh.shape),
        dtype=cfg.model.dtype,
        remat=cfg.model.remat,
        batch_size=cfg.train.batch_size,
        micro_batches=m,
        seq_len=t,
        sequences_per_device=b / len(devices),
        per_device_bytes=per_device,
        flops_per_step=_flops(compiled),
        flops_per_step_analytic=analytic,
        params=n_params,
        lower_seconds=lower_seconds,
        compile_seconds=compile_seconds,
    )


def format_plan(plan: Plan, hbm_gib: float | None = None) -> str:
    """The plan as a short human-readable table."""
    mesh = " × ".join(f"{k} {v}" for k, v in plan.mesh.items())
    by = plan.per_device_bytes
    where = f"{plan.devices} devices"
    if plan.slices > 1:
        where += (
            f" in {plan.slices} slices of {plan.devices // plan.slices} (simulated; the data axis "
            f"spans them, {plan.slices}-way over DCN)"
        )
    lines = [
        f"{where}, mesh {mesh}; {plan.dtype} compute, remat {plan.remat}",
        f"batch {plan.batch_size} × {plan.seq_len} tokens in {plan.micro_batches} micro-batch(es): "
        f"{plan.sequences_per_device:g} sequences per device per micro-batch",
        "per-device memory:",
        f"  parameters    {by['params'] / GiB:9.2f} GiB",
        f"  optimizer     {by['optimizer'] / GiB:9.2f} GiB",
        f"  temporaries   {by['temp'] / GiB:9.2f} GiB  (gradients, saved activations, workspace)",
        f"  arguments     {by['argument'] / GiB:9.2f} GiB  (state + batch; "
        f"output {by['output'] / GiB:.2f} GiB, {by['alias'] / GiB:.2f} GiB of it donated)",
        f"  total         {by['total'] / GiB:9.2f} GiB" + (f"  of {hbm_gib:g} GiB HBM" if hbm_gib else ""),
        f"FLOPs per step: XLA {plan.flops_per_step:.4g} per device (loop bodies counted once)"
        + (
            f"; 6N-style {plan.flops_per_step_analytic:.4g} for the step, "
            f"{plan.flops_per_step_analytic / plan.devices:.4g} per device"
            if plan.flops_per_step_analytic
            else ""
        ),
        f"compile: {plan.compile_seconds:.1f} s (lowering {plan.lower_seconds:.1f} s)",
    ]
    return "\n".join(lines)
