"""Several JAX processes on this machine through ``launch/local.sh``: a cross-process collective,
a dead process stopping the others, a SIGTERM stopping all of them at the same step, and
(slow) training that matches one process, resumes on other process counts, and survives a kill.

The processes are real (``jax.distributed`` over gloo on 127.0.0.1), each with simulated CPU
devices; the pytest process itself never joins them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gpt3_jax import distributed
from gpt3_jax.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "launch" / "local.sh"
HEARTBEAT_S = 5  # GPT3_JAX_HEARTBEAT_TIMEOUT for these runs: how soon a dead process is noticed


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPT3_JAX_", "SLURM_"))}
    env |= {
        "GPT3_JAX_HEARTBEAT_TIMEOUT": str(HEARTBEAT_S),
        "GPT3_JAX_INIT_TIMEOUT": "60",
        "LOG_DIR": str(tmp_path / "logs"),
        "GRACE_S": "60",
        "PYTHONPATH": str(ROOT),
        # this interpreter's gpt3_jax, whether or not its venv is on PATH (make test does not activate it)
        "GPT3_JAX": f"{sys.executable} -m gpt3_jax",
    }
    return env | extra


def _script(tmp_path: Path, body: str) -> str:
    """A Python program that joins the others first, as ``gpt3-jax train`` does; GPT3_JAX= this."""
    path = tmp_path / "worker.py"
    path.write_text("from gpt3_jax import distributed\ndistributed.initialize()\n" + textwrap.dedent(body))
    return f"{sys.executable} {path}"


def _local(n: int, k: int, args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", str(LOCAL), str(n), str(k), "--", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a test that fails part-way can kill the whole group
    )


def _children(pid: int) -> dict[int, int]:
    """local.sh's processes: JAX process id → OS pid."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    found = {}
    for child in map(int, out):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"GPT3_JAX_PROCESS_ID="):
                found[int(item.split(b"=")[1])] = child
    return found


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"local.sh still running after {timeout}s (a hang):\n{out[-3000:]}")
    return proc.returncode, out


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        if proc.poll() is not None:
            pytest.fail(f"local.sh exited ({proc.returncode}) early:\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{text!r} did not appear in {path} within {timeout}s")


# --- gpt3_jax.distributed on its own (no processes started) ---------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("GPT3_JAX_", "SLURM_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_single_process_is_a_no_op(clean_env: pytest.MonkeyPatch) -> None:
    assert distributed.detected_cluster() is None
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    assert distributed.stop_signals() == (signal.SIGTERM, signal.SIGINT)
    assert distributed.synced_stop(3, None) is None and distributed.synced_stop(3, "SIGINT") == "SIGINT"
    assert distributed.is_primary()


def test_single_task_slurm_step_is_not_a_cluster(clean_env: pytest.MonkeyPatch) -> None:
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    for k, v in env.items():
        clean_env.setenv(k, v)
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None
    clean_env.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({"coordinator": "127.0.0.1:1234"}, {}, "without --num-processes, --process-id"),
        ({}, {"GPT3_JAX_NUM_PROCESSES": "2", "GPT3_JAX_PROCESS_ID": "1"}, "without --coordinator"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, {}, "--process-id 2 is not in [0, 2)"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, {}, "must be at least 1"),
        ({"coordinator": "h", "num_processes": 2, "process_id": 0}, {}, "must be HOST:PORT"),
        ({}, {"GPT3_JAX_NUM_PROCESSES": "two"}, "GPT3_JAX_NUM_PROCESSES='two' is not an integer"),
    ],
)
def test_bad_settings_are_one_line_errors(
    clean_env: pytest.MonkeyPatch, kwargs: dict, env: dict[str, str], message: str
) -> None:
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(UserError, match=re.escape(message)):
        distributed.initialize(**kwargs)


def test_train_flags_are_checked_before_jax_starts(clean_env: pytest.MonkeyPatch, capsys) -> None:
    from gpt3_jax.cli import main

    config = str(ROOT / "configs" / "tiny.yaml")
    assert main(["train", config, "--coordinator", "127.0.0.1:1234", "--num-processes", "2"]) == 2
    assert "error: multi-process run without --process-id" in capsys.readouterr().err


# --- real processes through local.sh ----------------------------------------------------------


def test_cross_process_collective(tmp_path: Path) -> None:
    """2 processes × 2 devices: one 4-device mesh; a sum over it sees every process's rows."""
    worker = _script(
        tmp_path,
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        mesh = jax.make_mesh((jax.device_count(),), ("x",))
        rows = np.arange(2, dtype=np.float32) + 2 * jax.process_index()  # process p holds [2p, 2p+1]
        x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("x")), rows)
        total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
        print(f"RESULT {jax.process_index()} {jax.process_count()} {jax.device_count()} "
              f"{float(total)} {distributed.is_primary()} {distributed.multi_process()}", flush=True)
        """,
    )
    rc, out = _finish(_local(2, 2, ["worker"], _env(tmp_path, GPT3_JAX=worker)), timeout=120)
    assert rc == 0, out
    assert "RESULT 0 2 4 6.0 True True" in out
    assert "RESULT 1 2 4 6.0 False True" in (tmp_path / "logs" / "process_1.log").read_text()


@pytest.mark.slow
def test_dead_process_stops_the_others(tmp_path: Path) -> None:
    """SIGKILL one process mid-collective: the other exits by itself within the heartbeat
    timeout (local.sh's grace period is far longer), naming the cause; local.sh fails."""
    worker = _script(
        tmp_path,
        """
        import time, jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        mesh = jax.make_mesh((jax.device_count(),), ("x",))
        x = jax.make_array_from_process_local_data(NamedSharding(mesh, P("x")), np.ones(1, np.float32))
        total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))
        for i in range(100000):
            float(total(x))
            if i == 3:
                print("LOOPING", flush=True)
            time.sleep(0.05)
        """,
    )
    proc = _local(2, 1, ["worker"], _env(tmp_path, GPT3_JAX=worker))
    _wait_for(tmp_path / "logs" / "process_1.log", "LOOPING", proc, timeout=90)
    killed_at = time.monotonic()
    os.kill(_children(proc.pid)[1], signal.SIGKILL)
    rc, out = _finish(proc, timeout=HEARTBEAT_S + 40)
    took = time.monotonic() - killed_at
    assert rc != 0
    assert "process 1 was killed by signal 9" in out
    assert "another task died" in out  # JAX's own message, from process 0
    assert took < HEARTBEAT_S + 30, f"the survivor took {took:.0f}s to stop"


def test_sigterm_stops_every_process_at_the_same_step(tmp_path: Path) -> None:
    """SIGTERM to one process only: both leave their loop at the same step (synced_stop)."""
    worker = _script(
        tmp_path,
        """
        import os, time, jax
        assert distributed.stop_signals() == (__import__("signal").SIGINT,)
        with open(os.environ["LOG_DIR"] + f"/pid_{jax.process_index()}", "w") as f:
            f.write(str(os.getpid()))
        for step in range(1, 100000):
            time.sleep(0.02 * (1 + jax.process_index()))  # the two run at different speeds
            reason = distributed.synced_stop(step, None)
            if reason:
                print(f"STOPPED {jax.process_index()} {step} {reason}", flush=True)
                break
        """,
    )
    proc = _local(2, 1, ["worker"], _env(tmp_path, GPT3_JAX=worker))
    pid_file = tmp_path / "logs" / "pid_1"
    _wait_for(pid_file, "", proc, timeout=90)
    time.sleep(1.0)
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    rc, out = _finish(proc, timeout=60)
    assert rc == 0, out
    log1 = (tmp_path / "logs" / "process_1.log").read_text()
    step0 = out.split("STOPPED 0 ")[1].split()[0]
    assert f"STOPPED 1 {step0} SIGTERM" in log1, (out, log1)


def test_check_shared_sees_one_folder_or_fails_on_every_process(tmp_path: Path) -> None:
    """``distributed.check_shared``: a folder both processes write to passes (and its markers are
    cleaned up); one folder per process is a UserError on both."""
    worker = _script(
        tmp_path,
        f"""
        import jax
        from gpt3_jax.errors import UserError
        shared = {str(tmp_path / "shared")!r}
        distributed.check_shared(shared, "run.workdir")
        print("SHARED OK", flush=True)
        try:
            distributed.check_shared(f"{{shared}}-{{jax.process_index()}}", "run.workdir", timeout_s=2)
        except UserError as exc:
            print(f"NOT SHARED {{exc}}", flush=True)
        """,
    )
    rc, out = _finish(_local(2, 1, ["worker"], _env(tmp_path, GPT3_JAX=worker)), timeout=120)
    log1 = (tmp_path / "logs" / "process_1.log").read_text()
    assert rc == 0, out
    for text in (out, log1):
        assert "SHARED OK" in text
        assert "NOT SHARED run.workdir=" in text and "is not shared by the 2 processes" in text
        assert "run.workdir=gs://BUCKET/... or a filesystem mounted on all hosts" in text
    assert not list((tmp_path / "shared" / ".processes").iterdir())  # process 0 removed the markers


@pytest.mark.slow
def test_train_with_a_workdir_per_host_stops_in_seconds(tmp_path: Path) -> None:
    """Two processes, each given its own local run.workdir (as two hosts with local disks would
    be): both stop within 30 s with one line naming the fix, and exit code 2."""
    wrapper = tmp_path / "gpt3-jax-own-workdir.sh"
    wrapper.write_text(
        f'exec {sys.executable} -m gpt3_jax "$@" "run.workdir={tmp_path}/host$GPT3_JAX_PROCESS_ID"\n'
    )
    args = ["train", str(ROOT / "configs" / "tiny.yaml"), "--no-progress"]
    started = time.monotonic()
    rc, out = _finish(_local(2, 1, args, _env(tmp_path, GPT3_JAX=f"bash {wrapper}")), timeout=120)
    took = time.monotonic() - started
    log1 = (tmp_path / "logs" / "process_1.log").read_text()
    assert rc == 2, out
    assert took < 30, f"the processes took {took:.0f}s to stop"
    for text in (out, log1):
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "run.workdir=" in errors[0] and "not shared" in errors[0], text
        assert "Traceback" not in text
        assert "run.workdir=gs://BUCKET/... or a filesystem mounted on all hosts" in errors[0]


# --- training on several processes (slow: each run is tens of seconds on 2 shared cores) -------

STEPS = 30
TEXT_FILES = ("json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "bisect.py", "heapq.py")
TRAIN = (  # a 2-layer, d 32 model; one loss record per step; fsdp over all 4 devices
    "model.n_layer=2",
    "model.d_model=32",
    "model.n_head=2",
    "model.n_ctx=32",
    "model.vocab_size=128",
    "model.local_window=8",
    "model.dtype=float32",
    "mesh.fsdp=4",
    "train.batch_size=8",
    f"train.steps={STEPS}",
    "train.log_every=1",
    "train.sample_tokens=0",
    "checkpoint.every=5",
    "data.val_fraction=0.1",
)


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, str]]:
    """The ``gpt3-jax`` arguments (less run.workdir) and environment for the training runs."""
    import sysconfig

    from gpt3_jax.data import train_tokenizer

    root = tmp_path_factory.mktemp("multihost_data")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = root / "text.txt"
    text.write_text("".join((stdlib / f).read_text() for f in TEXT_FILES))
    tok = train_tokenizer([text], 128, root / "tokenizer", "char", progress=False)
    args = [
        "train",
        str(ROOT / "configs" / "tiny.yaml"),
        f"data.input=[{text}]",
        f"data.tokenizer={tok.path}",
        f"data.cache_dir={root / 'cache'}",
        *TRAIN,
    ]
    # A compilation cache shared by the runs: same programs, same numbers, less time.
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return args, env


def _train(
    setup: tuple[list[str], dict[str, str]], n: int, k: int, workdir: Path, **env: str
) -> tuple[int, str]:
    args, extra = setup
    logs = workdir.parent / f"{workdir.name}_logs_{n}x{k}"
    proc = _local(
        n, k, [*args, f"run.workdir={workdir}"], _env(workdir.parent, **extra, LOG_DIR=str(logs), **env)
    )
    return _finish(proc, timeout=900)


def _losses(workdir: Path) -> dict[int, float]:
    from gpt3_jax.training.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def _assert_same(got: dict[int, float], want: dict[int, float], steps: range) -> None:
    for s in steps:
        assert got[s] == pytest.approx(want[s], rel=1e-5), f"step {s}: {got[s]} vs {want[s]}"


def _checkpoints(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def baseline(train_setup: tuple[list[str], dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One process × 4 devices, uninterrupted: the losses every other layout must reproduce."""
    workdir = tmp_path_factory.mktemp("baseline") / "run"
    rc, out = _train(train_setup, 1, 4, workdir)
    assert rc == 0, out[-3000:]
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slow
def test_two_processes_train_like_one(train_setup, baseline, tmp_path: Path) -> None:
    """2 processes × 2 devices, parameters sharded over both: the same losses as 1 × 4; only
    process 0 logs, writes metrics and TensorBoard, and shows progress."""
    workdir = tmp_path / "run"
    rc, out = _train(train_setup, 2, 2, workdir)
    assert rc == 0, out[-3000:]
    assert "mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in out
    _assert_same(_losses(workdir), baseline, range(1, STEPS + 1))

    from gpt3_jax.training.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
    assert len(steps) == len(set(steps)) == STEPS, "a step was logged by more than one process"
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
    log1 = next(tmp_path.glob("run_logs_2x2/process_1.log")).read_text()
    assert "step 1: loss" in out and "step 1: loss" not in log1 and "train:" not in log1
    assert _checkpoints(workdir)[-1] == STEPS


@pytest.mark.slow
def test_preempted_two_processes_resume_on_one_and_on_four(train_setup, baseline, tmp_path: Path) -> None:
    """SIGTERM to every process of a 2 × 2 run: they stop at one step and save; the run then
    continues as 1 × 4 and as 4 × 1 with the losses of the uninterrupted run."""
    args, extra = train_setup
    workdir = tmp_path / "run"
    env = _env(tmp_path, **extra, LOG_DIR=str(tmp_path / "logs"))
    proc = _local(2, 2, [*args, f"run.workdir={workdir}", "checkpoint.every=0"], env)
    _wait_for(workdir / "metrics.jsonl", '"step": 5,', proc, timeout=600)
    os.kill(proc.pid, signal.SIGTERM)  # local.sh passes it on to both processes
    rc, out = _finish(proc, timeout=300)
    assert rc == 0, out[-3000:]
    stopped = _checkpoints(workdir)
    assert len(stopped) == 1 and 5 <= stopped[0] < STEPS, stopped  # checkpoint.every=0: only the stop's
    _assert_same(_losses(workdir), baseline, range(1, stopped[0] + 1))

    for n, k in ((1, 4), (4, 1)):
        copy = tmp_path / f"resume_{n}x{k}"
        shutil.copytree(workdir, copy)
        rc, out = _train(train_setup, n, k, copy)
        assert rc == 0, out[-3000:]
        assert f"resumed from step {stopped[0]}" in out
        _assert_same(_losses(copy), baseline, range(1, STEPS + 1))


@pytest.mark.slow
def test_killed_process_then_restart_resumes(train_setup, baseline, tmp_path: Path) -> None:
    """SIGKILL one of two processes mid-run: the other stops by itself (JAX's heartbeat; local.sh
    would wait far longer), naming the cause; the same command then resumes from the last
    complete checkpoint and ends with the uninterrupted run's losses."""
    args, extra = train_setup
    workdir = tmp_path / "run"
    env = _env(tmp_path, **extra, LOG_DIR=str(tmp_path / "logs"), GRACE_S="300")
    proc = _local(2, 2, [*args, f"run.workdir={workdir}"], env)
    _wait_for(workdir / "metrics.jsonl", '"step": 12,', proc, timeout=600)
    killed_at = time.monotonic()
    os.kill(_children(proc.pid)[1], signal.SIGKILL)
    rc, out = _finish(proc, timeout=300)
    took = time.monotonic() - killed_at
    assert rc != 0 and "process 1 was killed by signal 9" in out
    assert "another task died" in out
    assert took < HEARTBEAT_S + 60, f"process 0 took {took:.0f}s to stop"
    saved = _checkpoints(workdir)
    assert saved and saved[-1] >= 5, saved

    rc, out = _train(train_setup, 2, 2, workdir)
    assert rc == 0, out[-3000:]
    assert f"resumed from step {saved[-1]}" in out
    _assert_same(_losses(workdir), baseline, range(1, STEPS + 1))
