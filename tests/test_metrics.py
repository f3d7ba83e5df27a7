"""What the trainer reports: the MFU table, metrics.jsonl and TensorBoard on disk and in a bucket,
and the Weights & Biases tracker (offline: nothing leaves the machine)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import compilation_cache as compilation_cache  # noqa: F401 - autouse fixture

from gpt3_jax import paths
from gpt3_jax.config import load_config
from gpt3_jax.errors import UserError
from gpt3_jax.training.metrics import MetricsWriter, mfu, peak_flops, read_metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "device_kind, peak",
    [
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),  # v5e
        ("TPU v5e", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v5", 459e12),  # what a v5p calls itself
        ("TPU v6 lite", 918e12),  # v6e
        ("TPU v6e", 918e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("cpu", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_flops_per_device_kind(device_kind: str, peak: float | None) -> None:
    assert peak_flops(device_kind) == peak
    if peak is not None:  # 40% of 256 chips' peak
        assert mfu(1e9, 0.4 * 256 * peak / 1e9, device_kind, 256) == pytest.approx(0.4)
    else:
        assert mfu(1e9, 1e6, device_kind, 8) is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch installed")
def test_tensorboard_does_not_import_torch(tmp_path: Path) -> None:
    """tensorboardX imports PyTorch when it is installed (seconds of every run's startup): the
    writer keeps it out, and a torch imported before is left in place."""
    code = (
        "import sys; from gpt3_jax.training.metrics import MetricsWriter; "
        "w = MetricsWriter(sys.argv[1]); w.write(1, {'loss': 1.0}); w.close(); "
        "print('torch' in sys.modules)"
    )
    for i, (before, expected) in enumerate((("", "False"), ("import torch; ", "True"))):
        run = subprocess.run(
            [sys.executable, "-c", before + code, str(tmp_path / f"run{i}")],
            capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        assert run.stdout.split()[-1] == expected, run.stderr
    assert len(list(tmp_path.glob("run*/events.out.tfevents.*"))) == 2


@pytest.fixture(params=["local", "gs"])
def workdir(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(tmp_path / "run") if request.param == "local" else request.getfixturevalue("gcs")


def test_jsonl_and_tensorboard_resume_as_one_history(workdir: str) -> None:
    """Records past the restored step are dropped on resume; TensorBoard event files are written
    in the workdir, a bucket's included."""
    w = MetricsWriter(workdir)
    for step in (1, 2, 3):
        w.write(step, {"loss": 4.0 - step, "lr": 1e-3, "note": "text is kept in the JSONL only"})
    w.write(3, {"eval_loss": float("nan")})
    w.close()
    paths.append_text(f"{workdir}/metrics.jsonl", '{"step": 4, "lo')  # a line cut short by a kill -9
    w = MetricsWriter(workdir, resume_step=2)
    w.write(3, {"loss": 0.5})
    w.close()
    assert [(r["step"], r.get("loss")) for r in read_metrics(workdir)] == [(1, 3.0), (2, 2.0), (3, 0.5)]
    events = [p for p in paths.as_path(workdir).iterdir() if p.name.startswith("events.out.tfevents")]
    assert events and all(p.stat().length > 0 for p in events)


def test_trackers_are_checked_by_the_config() -> None:
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["run.trackers=[tensorboard, wandb]"])
    assert cfg.run.trackers == ("tensorboard", "wandb")
    assert load_config(ROOT / "configs" / "tiny.yaml").run.trackers == ("tensorboard",)
    with pytest.raises(UserError, match=r"run.trackers: unknown tracker 'mlflow'"):
        load_config(ROOT / "configs" / "tiny.yaml", ["run.trackers=[mlflow]"])
    with pytest.raises(UserError, match="lists a tracker twice"):
        load_config(ROOT / "configs" / "tiny.yaml", ["run.trackers=[wandb, wandb]"])


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One W&B run per workdir, continued on resume, with the config and every scalar record
    plotted against ``step``; offline mode keeps it on this machine."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[dict] = []
    real_log = wandb.sdk.wandb_run.Run.log

    def spy(self, data, *args, **kwargs):  # noqa: ANN001, ANN202 - wandb's signature
        logged.append(dict(data))
        return real_log(self, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", spy)
    workdir = tmp_path / "run"
    w = MetricsWriter(workdir, trackers=("wandb",), config={"model": {"n_layer": 2}})
    assert wandb.run is not None and wandb.run.config["model"] == {"n_layer": 2}
    w.write(1, {"loss": 2.5, "lr": 1e-3, "note": "not a number"})
    w.write(2, {"eval_loss": float("inf"), "eval_perplexity": 7.0})
    w.close()
    w = MetricsWriter(workdir, resume_step=1, trackers=("wandb",))
    w.write(2, {"loss": 2.25})
    w.close()
    assert logged == [
        {"step": 1, "loss": 2.5, "lr": 1e-3},
        {"step": 2, "eval_perplexity": 7.0},
        {"step": 2, "loss": 2.25},
    ]
    run_id = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
    # a folder per writer, offline-run-<second it started>-<run id>, and -1 on when that is taken
    offline = sorted((workdir / "wandb").glob("offline-run-*"))
    pattern = rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?"
    assert len(offline) == 2 and all(re.fullmatch(pattern, d.name) for d in offline), (
        "the resumed writer did not continue the same W&B run"
    )
    assert all((d / f"run-{run_id}.wandb").stat().st_size > 0 for d in offline)
    assert not list(workdir.glob("events.out.tfevents.*"))  # tensorboard was not asked for
    assert json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])["note"] == "not a number"


def test_wandb_missing_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the wandb extra were not installed
    with pytest.raises(UserError, match=r"pip install 'gpt3-jax\[wandb\]'"):
        MetricsWriter(tmp_path, trackers=("tensorboard", "wandb"))


def test_trainer_uses_the_configured_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.trackers=[wandb]``: the trainer logs to W&B (offline) and writes no TensorBoard events."""
    pytest.importorskip("wandb")
    from test_training import losses, make_text_data, tiny_config

    from gpt3_jax.training.loop import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = tmp_path / "run"
    cfg = tiny_config(workdir, make_text_data(tmp_path), "train.steps=2", "run.trackers=[wandb]")
    train(cfg, progress=False)
    assert sorted(losses(workdir)) == [1, 2]
    assert list((workdir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert not list(workdir.glob("events.out.tfevents.*"))
