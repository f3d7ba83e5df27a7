"""Many processes, one program: start ``jax.distributed`` and agree on when to stop.

Every host of a TPU pod or GPU cluster runs the same ``gpt3-jax train`` command; JAX joins them
into one set of global devices. ``initialize`` must run before anything touches a JAX device.
Where the processes come from:

- Cloud TPU VMs and SLURM (``srun``): JAX detects the coordinator, process count and id itself.
- Anything else (``launch/local.sh``, a hand-rolled cluster): ``--coordinator HOST:PORT
  --num-processes N --process-id I``, or the same in ``GPT3_JAX_COORDINATOR``,
  ``GPT3_JAX_NUM_PROCESSES``, ``GPT3_JAX_PROCESS_ID``.
- Nothing of the above: one process, and ``initialize`` does nothing.

Failure: the coordination service expects a heartbeat from every process; when one stops (the
process died, its host went away) every other process is terminated by JAX with "Terminating
process because the JAX distributed service detected fatal errors ... another task died" within
``GPT3_JAX_HEARTBEAT_TIMEOUT`` seconds (default 60), instead of waiting in a collective forever.

Stopping: with more than one process, SIGTERM reaches JAX's preemption notifier, and
``synced_stop(step, ...)`` is true on every process at the same step (the processes must save
the same checkpoint and leave the loop together, or the next collective deadlocks).

Shared storage: every process writes its shards of each checkpoint into ``run.workdir``, and
process 0 prepares the data there for the others, so all of them must see the same folder (a
``gs://`` bucket, or a filesystem mounted on every host). ``check_shared`` finds out in seconds,
before anything waits on the others' files.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from gpt3_jax.errors import UserError

ENV_COORDINATOR = "GPT3_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "GPT3_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "GPT3_JAX_PROCESS_ID"
ENV_HEARTBEAT_TIMEOUT = "GPT3_JAX_HEARTBEAT_TIMEOUT"
ENV_INIT_TIMEOUT = "GPT3_JAX_INIT_TIMEOUT"

HEARTBEAT_TIMEOUT_S = 60  # a dead peer is noticed within this; JAX's default is 100
INIT_TIMEOUT_S = 300  # how long process 0 waits for the others to join (hosts start unevenly)
SHUTDOWN_TIMEOUT_S = 60  # at exit, how long a process waits for the others to finish too
SHARED_CHECK_S = 5.0  # how long process 0 looks for the other processes' markers

log = logging.getLogger(__name__)


def _env_int(name: str, value: int | None) -> int | None:
    if value is not None:
        return value
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} is not an integer; set it to a whole number") from None


def detected_cluster() -> str | None:
    """The managed cluster JAX would configure itself from ("slurm", "gce_tpu", …), or None.

    A single-task SLURM step counts as none: JAX would pin that task to one GPU of its node.
    """
    from jax._src import clusters  # the registry jax.distributed.initialize() itself consults

    for env in clusters.ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            name = getattr(env, "name", env.__name__)
            if name == "slurm" and os.environ.get("SLURM_NTASKS") == "1":
                return None
            return name
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` for a subcommand; pass the parsed
    values to ``initialize`` first thing in its ``run``."""
    group = parser.add_argument_group(
        "multi-process", "not needed on TPU VMs, under SLURM, or for one process (see docs/launch.md)"
    )
    add = group.add_argument
    add("--coordinator", metavar="HOST:PORT", help=f"process 0's address (or ${ENV_COORDINATOR})")
    add("--num-processes", type=int, metavar="N", help=f"how many processes in all (or ${ENV_NUM_PROCESSES})")
    add("--process-id", type=int, metavar="I", help=f"this one's, 0 to N-1 (or ${ENV_PROCESS_ID})")


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int | None = None,
    init_timeout_s: int | None = None,
) -> bool:
    """Join this process to the others; True when ``jax.distributed`` is now running.

    Arguments left ``None`` come from the ``GPT3_JAX_*`` environment variables, then from a
    detected TPU VM or SLURM job. With none of these (or a single process) it does nothing and
    returns False. Call it before any JAX computation or ``jax.devices()``.
    """
    import jax

    if jax.distributed.is_initialized():
        return True
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR, "").strip() or None
    num_processes = _env_int(ENV_NUM_PROCESSES, num_processes)
    process_id = _env_int(ENV_PROCESS_ID, process_id)
    heartbeat = _env_int(ENV_HEARTBEAT_TIMEOUT, heartbeat_timeout_s) or HEARTBEAT_TIMEOUT_S
    init_timeout = _env_int(ENV_INIT_TIMEOUT, init_timeout_s) or INIT_TIMEOUT_S

    explicit = (coordinator, num_processes, process_id)
    cluster = detected_cluster()
    if all(v is None for v in explicit) and cluster is None:
        return False  # one process on its own: nothing to join
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes {num_processes}: must be at least 1")
    if num_processes == 1 and process_id in (None, 0):
        return False
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise UserError(f"--process-id {process_id} is not in [0, {num_processes}); number processes from 0")
    if cluster is None:
        missing = [
            flag
            for flag, v in zip(("--coordinator", "--num-processes", "--process-id"), explicit, strict=True)
            if v is None
        ]
        if missing:
            raise UserError(
                f"multi-process run without {', '.join(missing)}; give all three (or {ENV_COORDINATOR}, "
                f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or launch under SLURM or on a TPU VM"
            )
        if ":" not in coordinator:
            raise UserError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. 10.0.0.1:8476")

    if _may_use_cpu():
        # CPU devices of different processes talk through gloo; without it cross-process
        # collectives fail ("not implemented" on the CPU client). Harmless beside a GPU or TPU.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    log.info("jax.distributed: coordinator %s, %s processes, this %s", coordinator, num_processes, process_id)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=init_timeout,
            heartbeat_timeout_seconds=heartbeat,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except RuntimeError as exc:
        raise RuntimeError(f"jax.distributed could not start: {exc}") from exc
    return True


def _may_use_cpu() -> bool:
    """False only when JAX_PLATFORMS names accelerators alone; read without starting a backend."""
    import jax

    platforms = (jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")).lower()
    return not platforms.strip() or "cpu" in platforms.split(",")


def process_index() -> int:
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Process 0: the one that prints, writes metrics and TensorBoard, and shows progress bars."""
    return process_index() == 0


def multi_process() -> bool:
    """True when this program runs as more than one JAX process."""
    import jax

    return jax.distributed.is_initialized() and jax.process_count() > 1


def _preemption_synced() -> bool:
    from jax._src import distributed as jax_distributed

    return multi_process() and jax_distributed.global_state.preemption_sync_manager is not None


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals a trainer should catch itself: SIGTERM belongs to JAX's preemption notifier
    when several processes run (a Python handler would hide it from the other processes)."""
    if _preemption_synced():
        return (signal.SIGINT,)
    return (signal.SIGTERM, signal.SIGINT)


def forward_to_peers(signum: int) -> None:
    """Make a signal this process caught (Ctrl-C) a stop of every process: re-send it to
    ourselves as SIGTERM, which JAX's notifier shares with the others. One process: nothing."""
    if signum != signal.SIGTERM and _preemption_synced():
        os.kill(os.getpid(), signal.SIGTERM)


def synced_stop(step: int, received: str | None) -> str | None:
    """The reason to stop after ``step`` (e.g. "SIGTERM"), or None to go on; the same on every
    process. Call it once per step, with increasing steps, on every process.

    ``received`` is the signal this process caught itself. One process: that is the answer.
    Several: JAX agrees on a step at which all of them stop, once any of them got SIGTERM.
    """
    if not _preemption_synced():
        return received
    from jax.experimental import multihost_utils

    if multihost_utils.reached_preemption_sync_point(step):
        return received or "SIGTERM"
    return None


def check_shared(folder: str | os.PathLike, key: str, timeout_s: float = SHARED_CHECK_S) -> None:
    """With several processes, make sure they all see one ``folder`` (the value of config ``key``):
    each writes a marker file into it, and process 0 looks for all of them. When it cannot see
    them within ``timeout_s``, every process raises the same one-line UserError. One process:
    nothing to check. Call it on every process at the same point.
    """
    if not multi_process():
        return
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from gpt3_jax import paths

    # a fresh marker folder for this check, named by process 0, so old markers never count
    nonce = np.random.default_rng().integers(2**31) if is_primary() else 0
    nonce = int(multihost_utils.broadcast_one_to_all(np.int32(nonce)))
    markers = paths.as_path(folder) / ".processes" / f"{nonce:08x}"
    paths.write_text(markers / str(jax.process_index()), f"{os.uname().nodename}\n")
    multihost_utils.sync_global_devices(f"gpt3_jax.check_shared {key}")  # every marker is written
    missing: list[int] = []
    if is_primary():
        deadline = time.monotonic() + timeout_s
        missing = list(range(jax.process_count()))
        while missing:
            listed = {p.name for p in markers.iterdir()} if markers.is_dir() else set()
            missing = [i for i in missing if str(i) not in listed and not (markers / str(i)).exists()]
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        paths.remove(markers)
    n_missing = int(multihost_utils.broadcast_one_to_all(np.int32(len(missing))))
    if n_missing:
        raise UserError(
            f"{key}={folder} is not shared by the {jax.process_count()} processes (process 0 cannot "
            f"see the marker files of {n_missing} of them there); use storage every host sees: "
            f"{key}=gs://BUCKET/... or a filesystem mounted on all hosts"
        )
