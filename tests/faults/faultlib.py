"""Helpers for the fault tests: a trainer in a subprocess that says where it is, and bitwise checks.

``DRIVER`` runs ``gpt3-jax train`` with a few hooks, set by environment variables, that print a
marker line before the moments a fault is aimed at and may slow them down (host-side sleeps: the
numbers are untouched):

    FAULT step N        before step N runs            FAULT_STEP_SLEEP   seconds per step
    FAULT save N        the save of step N starts      (the data iterator's state was just taken)
    FAULT saved N       its arrays are off the devices; the write goes on in the background
    FAULT eval N        an evaluation starts           FAULT_EVAL_SLEEP   seconds inside it
    FAULT sample N      a sample starts                FAULT_SAMPLE_SLEEP seconds inside it

``FAULT_FSIZE=S:BYTES`` sets RLIMIT_FSIZE to BYTES when the save of step S starts: every later
write past BYTES in a file fails with EFBIG (Python ignores SIGXFSZ), as on a full disk.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DRIVER = """
import os, resource, sys, time
from gpt3_jax import checkpoint
from gpt3_jax.training import loop

env = lambda k: float(os.environ.get(k, "0"))
mark = lambda text: print("FAULT " + text, flush=True)
where = {"step": 0}

make = loop.jit_train_step
def hooked(*args, **kwargs):
    step_fn = make(*args, **kwargs)
    def run(state, batch):
        if where["step"] == 0:
            where["step"] = int(state.step)
        where["step"] += 1
        mark(f"step {where['step']}")
        time.sleep(env("FAULT_STEP_SLEEP"))
        return step_fn(state, batch)
    return run
loop.jit_train_step = hooked

save = checkpoint.Checkpointer.save
def hooked_save(self, state, data_state):
    step = int(state.step)
    first, limit = map(int, os.environ.get("FAULT_FSIZE", "-1:0").split(":"))
    if 0 <= first <= step:
        if step == first:
            self.mgr.wait_until_finished()  # the previous step's write ends before the disk fills
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    mark(f"save {step}")
    save(self, state, data_state)
    mark(f"saved {step}")
checkpoint.Checkpointer.save = hooked_save

def slowed(name, fn, sleep):
    def run(*args, **kwargs):
        mark(f"{name} {where['step']}")
        time.sleep(env(sleep))
        return fn(*args, **kwargs)
    return run
loop._evaluate = slowed("eval", loop._evaluate, "FAULT_EVAL_SLEEP")
loop._sample = slowed("sample", loop._sample, "FAULT_SAMPLE_SLEEP")

from gpt3_jax.cli import main
sys.exit(main())  # as the gpt3-jax program runs it (argv from sys.argv)
"""


class Trainer:
    """``gpt3-jax train ARGS`` under ``DRIVER`` in a subprocess; its output read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], **faults: str):
        env = {**env, "PYTHONUNBUFFERED": "1", **faults}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, *args, "--no-progress"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, marker: str, timeout: float = 300) -> bool:
        """Block until a line equal to ``marker`` comes (True) or the process ends first (False)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                raise TimeoutError(f"no {marker!r} within {timeout} s:\n{self.output[-3000:]}") from None
            if line is None:
                return False
            if line.rstrip("\n") == marker:
                return True

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)


def finalized(workdir: Path) -> list[int]:
    """The workdir's finalized checkpoint steps, newest first."""
    from gpt3_jax.checkpoint import finalized_steps

    root = workdir / "checkpoints"
    return finalized_steps(root) if root.is_dir() else []


def unfinished(workdir: Path) -> dict[str, list[str]]:
    """Step folders a save left unfinished (Orbax's temporary folders) → the items in each."""
    root = workdir / "checkpoints"
    if not root.is_dir():
        return {}
    return {
        p.name: sorted(q.name for q in p.iterdir() if q.is_dir())
        for p in sorted(root.iterdir())
        if ".orbax-checkpoint-tmp" in p.name
    }


def restore_all(workdir: Path, step: int) -> dict[str, Any]:
    """Everything in ``workdir``'s checkpoint ``step`` (digest checked), the arrays as numpy."""
    import jax

    from gpt3_jax import checkpoint
    from gpt3_jax.training.setup import setup

    cfg = checkpoint.load_config(workdir / "checkpoints" / str(step))
    r = checkpoint.restore(workdir / "checkpoints", step, cfg, tx=setup(cfg).tx)
    arrays = {"params": r["params"].to_pure_dict(), "opt_state": r["opt_state"], "meta": r["meta"]}
    return {"arrays": jax.tree.map(np.asarray, checkpoint._pure(arrays)), "data": r["data"]}


def final_params(workdir: Path, step: int) -> dict[str, Any]:
    """The parameters of ``workdir``'s checkpoint ``step`` as a tree of arrays."""
    from gpt3_jax import checkpoint

    cfg = checkpoint.load_config(workdir / "checkpoints" / str(step))
    return checkpoint.restore(workdir / "checkpoints", step, cfg)["params"].to_pure_dict()


def differences(a: Any, b: Any) -> list[str]:
    """The leaf paths where two trees of arrays are not bit for bit the same (dtype, shape and
    bytes, so NaNs and signed zeros compare as bits); a leaf in one tree only counts too."""
    import jax

    la = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(a)}
    lb = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(b)}
    return sorted(
        k
        for k in la.keys() | lb.keys()
        if k not in la
        or k not in lb
        or (la[k].dtype, la[k].shape, la[k].tobytes()) != (lb[k].dtype, lb[k].shape, lb[k].tobytes())
    )
