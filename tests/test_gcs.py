"""A run that lives in a bucket, end to end, against a local Cloud Storage emulator (the ``gcs``
fixture): tokenizer and data prepared from ``gs://`` text, training with ``run.workdir=gs://...``,
resuming after a save cut short (and, slow, after ``kill -9``) to the same losses as an
uninterrupted run, then ``sample``, ``eval`` and ``convert to-hf`` straight from the bucket (and
``convert from-hf`` back into it).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from test_resume import DRIVER, _cli, _env
from test_training import TEXT_FILES, TINY, losses
from test_training import compilation_cache as compilation_cache  # noqa: F401 - autouse fixture

from gpt3_jax import paths
from gpt3_jax.cli import main
from gpt3_jax.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DENSE = ("model.attention_pattern=[dense]",)  # an all-dense model converts to GPT-2


@pytest.fixture(scope="module")
def bucket_data(tmp_path_factory: pytest.TempPathFactory, gcs_emulator: str) -> dict[str, str]:
    """Text in the bucket, and a tokenizer and prepared data made from it there by the CLI."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    where = f"{gcs_emulator}/cycle"
    text = f"{where}/text/python.txt"
    paths.write_text(text, "".join((stdlib / f).read_text() for f in TEXT_FILES))
    tok, prepared = f"{where}/tok", f"{where}/prepared"
    assert main(["tokenizer", "train", "--input", text, "--vocab-size", "128", "--model-type", "char",
                 "--out", tok]) == 0  # fmt: skip
    assert main(["data", "prepare", "--input", text, "--tokenizer", tok, "--out", prepared,
                 "--val-fraction", "0.1"]) == 0  # fmt: skip
    return {"root": where, "text": text, "tokenizer": f"{tok}/tokenizer.model", "prepared": prepared}


def _overrides(workdir: str, *extra: str) -> list[str]:
    return [f"run.workdir={workdir}", *TINY, *DENSE, *extra]


def _train(workdir: str, *extra: str) -> dict:
    from gpt3_jax.training.loop import train

    return train(load_config(ROOT / "configs" / "tiny.yaml", _overrides(workdir, *extra)), progress=False)


@pytest.mark.slow
def test_a_run_in_a_bucket(bucket_data: dict[str, str], gcs: str, capsys) -> None:
    from gpt3_jax import checkpoint
    from gpt3_jax.training.metrics import read_metrics

    steps = ("train.steps=6", "checkpoint.every=3", "train.eval_every=3")
    ref = f"{gcs}/ref"  # trains on the prepared data in the bucket
    _train(ref, f"data.input=[{bucket_data['prepared']}]", *steps)
    assert checkpoint.resolve(ref) == (paths.as_path(f"{ref}/checkpoints"), 6)
    assert paths.as_path(f"{ref}/checkpoints/tokenizer.model").is_file()
    assert paths.as_path(f"{ref}/config.yaml").is_file()
    assert [p.name for p in paths.as_path(ref).iterdir() if p.name.startswith("events.out.tfevents")]

    # the same stream from the text, tokenized into the run's data cache in the bucket
    run = f"{gcs}/run"
    from_text = (f"data.input=[{bucket_data['text']}]", f"data.tokenizer={bucket_data['tokenizer']}")
    _train(run, *from_text, *steps)
    assert losses(run) == losses(ref)
    assert [p.name.split("-")[0] for p in paths.as_path(f"{run}/data").iterdir()] == ["tokens"]

    # a save cut short: step 6's folder without Orbax's commit file is not a checkpoint
    paths.remove(f"{run}/checkpoints/6/commit_success.txt")
    assert checkpoint.resolve(run)[1] == 3
    summary = _train(run, *from_text, *steps)
    assert summary["start_step"] == 3 and losses(run) == losses(ref)  # steps 4-6 again, to the bit
    records = [(r["step"], "loss" in r) for r in read_metrics(run)]
    assert len(records) == len(set(records)), "metrics.jsonl in the bucket repeats steps after the resume"
    capsys.readouterr()

    assert main(["sample", "--checkpoint", run, "--prompt", "def ", "--max-new-tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_tokens"] == 8
    assert main(["eval", "--checkpoint", run, "--json"]) == 0  # the run's validation split, from the bucket
    val = json.loads(capsys.readouterr().out)
    text = bucket_data["text"]
    assert main(["eval", "--checkpoint", run, "--input", text, "--json", "--max-batches", "2"]) == 0
    assert np.isfinite(val["loss"]) and json.loads(capsys.readouterr().out)["tokens"] > 0

    hf = f"{gcs}/hf"
    assert main(["convert", "to-hf", run, hf]) == 0
    from safetensors.numpy import load_file

    assert json.loads(paths.as_path(f"{hf}/config.json").read_text())["n_layer"] == 2
    with paths.local_file(f"{hf}/model.safetensors") as local:
        wte = load_file(local)["transformer.wte.weight"]
    _, model = checkpoint.load_model(run)
    np.testing.assert_array_equal(wte, np.asarray(model.embed.wte[...])[: wte.shape[0]])
    back = f"{gcs}/back"  # and from Hugging Face files in the bucket to a checkpoint there
    assert main(["convert", "from-hf", hf, back]) == 0
    _, again = checkpoint.load_model(back)
    np.testing.assert_array_equal(wte, np.asarray(again.embed.wte[...])[: wte.shape[0]])


@pytest.mark.slow
def test_kill_9_in_a_bucket_then_resume_matches(bucket_data: dict[str, str], gcs: str) -> None:
    """The trainer as a subprocess with its workdir in the bucket, killed with SIGKILL after its
    step-20 checkpoint is complete; the same command resumes it to the uninterrupted run's losses."""
    import subprocess
    import sys

    data = f"data.input=[{bucket_data['prepared']}]"
    reference = f"{gcs}/reference"
    _train(reference, data, "train.steps=40", "checkpoint.every=20")
    run = f"{gcs}/killed"
    args = ["train", str(ROOT / "configs" / "tiny.yaml"), *_overrides(run, data, "train.steps=40")]
    args += ["checkpoint.every=20", "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, "20", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    done = paths.as_path(f"{run}/checkpoints/20/commit_success.txt")  # Orbax writes it last
    deadline = time.monotonic() + 600
    while not done.exists():
        if proc.poll() is not None:
            pytest.fail(f"trainer exited ({proc.returncode}) before checkpoint 20:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, "no checkpoint 20 in the bucket after 600 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not paths.as_path(f"{run}/checkpoints/40/commit_success.txt").exists()
    out = _cli(args[:-1], _env())
    assert "resumed from step 20" in out
    got, want = losses(run), losses(reference)
    assert [got[s] for s in range(1, 41)] == [want[s] for s in range(1, 41)]
