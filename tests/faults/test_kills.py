"""Real faults on a real trainer process (``make test-faults``): kill -9 at random moments, a save
that runs out of space, SIGTERM during an evaluation, a sample and a save.

Every interrupted run is resumed with the same command to its last step, and its final state —
parameters, optimizer state, step, tokens, RNG key and the data iterator's position — must be bit
for bit the state of an uninterrupted run of the same program (the same driver, the same 8
simulated devices). The trials print one line each (``-s``): the seed, where the kill landed,
what was on disk, where the restart resumed.

The kill trials draw their moments from ``FAULT_SEED`` (default: a new seed per run, printed)
and run ``FAULT_TRIALS`` of them (default 10).
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from faultlib import Trainer, differences, finalized, restore_all, unfinished
from test_resume import _env
from test_training import TextData, cli_args, make_text_data
from test_training import compilation_cache as compilation_cache  # noqa: F401 - autouse fixture

pytestmark = pytest.mark.faults

STEPS = 12
# eval every 4 steps in every run, the reference included: the SIGTERM tests stop inside one
RUN = (
    f"train.steps={STEPS}",
    "checkpoint.every=2",
    "checkpoint.keep=2",
    "train.log_every=3",
    "train.eval_every=4",
)
STEP_SLEEP = 0.25  # seconds of host-side sleep before each step: room to land a kill inside one
RESUMED = re.compile(r"^resumed from step (\d+):", re.M)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextData:
    return make_text_data(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return _env()


def _run_to_end(workdir: Path, data: TextData, env: dict[str, str], *extra: str, **faults: str) -> Trainer:
    t = Trainer(cli_args(workdir, data, *RUN, *extra), env, **faults)
    rc = t.finish()
    assert rc == 0, t.output[-3000:]
    return t


def _same_state(workdir: Path, ref: dict) -> None:
    got = restore_all(workdir, STEPS)
    assert got["data"] == ref["data"], "the data iterator's state differs from the uninterrupted run's"
    differ = differences(got["arrays"], ref["arrays"])
    assert not differ, f"not bitwise equal to the uninterrupted run: {differ[:5]}"


@pytest.fixture(scope="module")
def reference(data: TextData, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run's final state."""
    workdir = tmp_path_factory.mktemp("reference")
    _run_to_end(workdir, data, env)
    return restore_all(workdir, STEPS)


# --- kill -9 at random moments ------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """Where to kill: after the marker ``FAULT <event> <step>`` and ``delay`` seconds more."""

    event: str  # "step": inside a step; "save": while the data state is taken and the save starts;
    # "saved": the arrays are off the devices and the asynchronous write is going on
    step: int
    delay: float

    def __str__(self) -> str:
        return f"{self.delay * 1000:.0f} ms after 'FAULT {self.event} {self.step}'"


def draw_kills(rng: random.Random, trials: int) -> list[Kill]:
    """``trials`` kill moments, the three kinds in turn, each at a random step and time."""
    kinds = ("step", "save", "saved")
    saves = list(range(2, STEPS, 2))  # the checkpoint steps before the last
    kills = []
    for i in range(trials):
        event = kinds[i % len(kinds)]
        if event == "step":
            kills.append(Kill(event, rng.randint(1, STEPS), rng.uniform(0.0, STEP_SLEEP + 0.05)))
        else:
            kills.append(Kill(event, rng.choice(saves), rng.uniform(0.0, 0.03)))
    return kills


SEED = int(os.environ.get("FAULT_SEED") or random.SystemRandom().randrange(2**31))
TRIALS = int(os.environ.get("FAULT_TRIALS", "10"))
KILLS = draw_kills(random.Random(SEED), TRIALS)


def test_the_trials_cover_each_kind_of_moment() -> None:
    assert TRIALS >= 10 and {k.event for k in KILLS} == {"step", "save", "saved"}


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_9_at_a_random_moment_resumes_to_the_same_bits(
    trial: int, reference: dict, data: TextData, env: dict[str, str], tmp_path: Path
) -> None:
    kill = KILLS[trial]
    t = Trainer(cli_args(tmp_path, data, *RUN), env, FAULT_STEP_SLEEP=str(STEP_SLEEP))
    if not t.wait_for(f"FAULT {kill.event} {kill.step}"):
        pytest.fail(f"the trainer ended before {kill}:\n{t.output[-3000:]}")
    time.sleep(kill.delay)
    t.signal(signal.SIGKILL)
    assert t.finish() == -signal.SIGKILL
    on_disk, cut = finalized(tmp_path), unfinished(tmp_path)
    assert all(s < STEPS for s in on_disk), f"a killed run cannot have finished: {on_disk}"

    resumed = _run_to_end(tmp_path, data, env)
    started = RESUMED.search(resumed.output)
    if on_disk:
        assert started and int(started.group(1)) == on_disk[0], resumed.output[-3000:]
    else:
        assert started is None and "new run" in resumed.output
    _same_state(tmp_path, reference)
    print(
        f"\nkill trial {trial + 1}/{TRIALS} (seed {SEED}): killed {kill}; finalized then {on_disk or 'none'}"
        f"; unfinished save {sorted(cut) or 'none'}; resumed from "
        f"{started.group(1) if started else 'the start'}; final state bitwise equal: yes"
    )


# --- a save that runs out of space ---------------------------------------------------------------


def test_a_save_out_of_space_exits_4_and_keeps_the_older_checkpoints(
    reference: dict, data: TextData, env: dict[str, str], tmp_path: Path
) -> None:
    """From the save of step 6 on, no file may grow past 16 KiB (RLIMIT_FSIZE: writes fail with
    EFBIG, as on a full disk): that save fails, the run stops with exit code 4 and one line, the
    steps before it restore and match their digests, and the same command resumes to the end."""
    t = Trainer(cli_args(tmp_path, data, *RUN), env, FAULT_FSIZE="6:16384")
    rc = t.finish()
    assert rc == 4, t.output[-3000:]
    # one line on stderr (stdout and stderr together here): the run's progress, the fault markers,
    # the error, and nothing of what Orbax's threads report about the failed writes
    log = [line for line in t.output.splitlines() if not line.startswith(("FAULT ", "step "))]
    errors = [line for line in log if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in t.output and len(log) <= 4, t.output[-3000:]
    intact = r"error: saving checkpoint step 6 to \S+ failed \(.+\); the older checkpoints are intact"
    assert re.match(intact, errors[0]), errors[0]
    assert "run the same command again" in errors[0]
    assert finalized(tmp_path) == [4, 2]
    for step in (4, 2):
        restore_all(tmp_path, step)  # readable, digest checked
    resumed = _run_to_end(tmp_path, data, env)
    assert RESUMED.search(resumed.output).group(1) == "4"
    _same_state(tmp_path, reference)


# --- SIGTERM in the middle of the work between steps ---------------------------------------------

SIGTERM_AT = {  # the marker to wait for, the extra overrides, the slowdown that keeps us inside it
    "evaluation": ("FAULT eval 4", (), {"FAULT_EVAL_SLEEP": "2"}),
    "sampling": (
        "FAULT sample 4",
        ("train.sample_every=4", "train.sample_tokens=8"),
        {"FAULT_SAMPLE_SLEEP": "2"},
    ),
    "save": ("FAULT save 4", (), {}),
    "asynchronous write": ("FAULT saved 4", (), {}),
}


@pytest.mark.parametrize("during", SIGTERM_AT)
def test_sigterm_during_the_work_between_steps_ends_with_a_complete_checkpoint(
    during: str, reference: dict, data: TextData, env: dict[str, str], tmp_path: Path
) -> None:
    marker, extra, faults = SIGTERM_AT[during]
    t = Trainer(cli_args(tmp_path, data, *RUN, *extra), env, FAULT_STEP_SLEEP="0.2", **faults)
    assert t.wait_for(marker), t.output[-3000:]
    t.signal(signal.SIGTERM)
    assert t.finish() == 0, t.output[-3000:]
    assert "received SIGTERM" in t.output
    steps = finalized(tmp_path)
    assert steps and 4 <= steps[0] < STEPS and not unfinished(tmp_path), (steps, unfinished(tmp_path))
    restore_all(tmp_path, steps[0])  # complete: every item there, the digest matches
    resumed = _run_to_end(tmp_path, data, env, *extra)
    assert RESUMED.search(resumed.output).group(1) == str(steps[0])
    _same_state(tmp_path, reference)
    print(f"\nSIGTERM during {during}: exit 0, checkpoint step {steps[0]} complete; resumed to the same bits")
