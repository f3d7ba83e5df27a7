"""``gpt3-jax plan CONFIG [overrides] --devices N [--slices S] [--hbm-gib G] [--json]``: per-device
memory and FLOPs of the real train step, compiled ahead of time for N simulated devices (in S
simulated slices)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys

from gpt3_jax.cli.common import add_config_args, config_from_args

HELP = """\
Compiles the trainer's own train step (gpt3_jax.training.step.jit_train_step) ahead of time for N
simulated CPU devices and prints what one device needs: parameters and optimizer state (their
shards), XLA temporaries (gradients, activations saved for the backward pass, workspace) and the
total; FLOPs per step; compile time. Nothing is allocated, so a 175B model plans on a laptop.

The batch is one full step: train.batch_size sequences of model.n_ctx tokens in
train.micro_batches micro-batches (no batch ramp). model.dtype=auto plans bfloat16 compute, as
on an accelerator. Exit 2 on a mesh that does not match N, or a micro-batch that does not split
over the data-parallel size (mesh data × fsdp).

Slices (multi-slice TPU): --slices S splits the N devices into S slices of N/S and sets
mesh.dcn_data=S. What is simulated: each slice is a block of consecutive CPU devices, built into
the mesh by the same code that groups real TPUs by their slice_index, so the data axis spans the
slices (over DCN) while fsdp and tensor stay inside one, and parameters and optimizer state are
sharded within a slice and replicated across slices, exactly as on the pod; the memory figures
are therefore the pod's. What is not: the DCN's bandwidth and latency (step time), and
per-slice physical topology.

FLOPs: XLA's cost analysis of one device's program counts each loop body once (one layer group
of one micro-batch); the 6N-style figure from `gpt3-jax info` is the one for MFU and step time.
Memory comes from XLA:CPU's buffer assignment: a faithful picture of what is live at once, but
XLA:CPU keeps some bfloat16 buffers in float32, so the figure errs on the high side.

  gpt3-jax plan configs/gpt3-175b.yaml --devices 512 mesh.fsdp=64 mesh.tensor=8 \\
      train.batch_size=2048 --hbm-gib 95
  gpt3-jax plan configs/gpt3-175b.yaml --devices 1024 --slices 2 mesh.fsdp=64 mesh.tensor=8 \\
      --hbm-gib 95                                   # two v5p-1024 slices
"""

DEVICE_FLAG = "--xla_force_host_platform_device_count"
REEXEC_MARK = "GPT3_JAX_PLAN_CHILD"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="per-device memory and FLOPs of the train step, compiled ahead of time",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--devices", type=int, required=True, help="number of devices to plan for, in all")
    parser.add_argument(
        "--slices",
        type=int,
        default=1,
        metavar="S",
        help="simulate S multi-slice TPU slices of devices/S each (sets mesh.dcn_data=S); default 1",
    )
    parser.add_argument(
        "--hbm-gib", type=float, default=None, help="device memory in GiB; warn when the plan exceeds it"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(run=run)


def _xla_flags(n: int) -> str:
    """XLA_FLAGS with the simulated device count set to ``n`` (other flags kept)."""
    flags = re.sub(rf"{DEVICE_FLAG}=\d+", "", os.environ.get("XLA_FLAGS", "")).split()
    return " ".join([*flags, f"{DEVICE_FLAG}={n}"])


def _reexec(args: argparse.Namespace) -> int:
    """Run this plan in a fresh process whose JAX sees ``args.devices`` CPU devices."""
    env = dict(os.environ, XLA_FLAGS=_xla_flags(args.devices), JAX_PLATFORMS="cpu", **{REEXEC_MARK: "1"})
    argv = [sys.executable, "-m", "gpt3_jax", "plan", args.config, *args.overrides]
    argv += ["--devices", str(args.devices), "--slices", str(args.slices)]
    argv += ["--hbm-gib", str(args.hbm_gib)] if args.hbm_gib is not None else []
    argv += ["--json"] if args.json else []
    argv += ["--debug"] if args.debug else []
    return subprocess.run(argv, env=env, check=False).returncode


def _devices(n: int) -> list | None:
    """N CPU devices for the plan, or None when this process's JAX cannot provide them (it was
    imported before the device count could be set)."""
    if "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = _xla_flags(n)
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    try:
        cpus = jax.devices("cpu")
    except RuntimeError:
        return None
    return cpus[:n] if len(cpus) >= n else None


def run(args: argparse.Namespace) -> int:
    from gpt3_jax.errors import UserError

    if args.devices < 1:
        raise UserError(f"--devices {args.devices}: must be a positive number of devices")
    if args.slices < 1 or args.devices % args.slices:
        raise UserError(f"--slices {args.slices}: must be a positive divisor of --devices {args.devices}")
    cfg = config_from_args(args)  # bad keys fail here, before any compile
    if args.slices > 1:
        if cfg.mesh.dcn_data not in (1, args.slices):
            raise UserError(
                f"--slices {args.slices} but mesh.dcn_data={cfg.mesh.dcn_data}; drop one or make them equal"
            )
        cfg = cfg.replace(mesh=dataclasses.replace(cfg.mesh, dcn_data=args.slices))
    devices = _devices(args.devices)
    if devices is None:
        if os.environ.get(REEXEC_MARK):
            raise UserError(f"could not simulate {args.devices} CPU devices; check XLA_FLAGS")
        return _reexec(args)

    from gpt3_jax.plan import GiB, compile_plan, format_plan

    plan = compile_plan(cfg, devices, progress=not args.json and sys.stderr.isatty())
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2))
    else:
        print(f"{args.config}: {format_plan(plan, args.hbm_gib)}")
    total = plan.per_device_bytes["total"] / GiB
    if args.hbm_gib is not None and total > args.hbm_gib:
        print(
            f"warning: the plan needs {total:.2f} GiB per device, more than --hbm-gib {args.hbm_gib:g}; "
            "try more micro-batches, model.remat=full, a larger fsdp or tensor axis",
            file=sys.stderr,
        )
    return 0
