"""Bad configs on the command line: one line on stderr naming the key, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def gpt3_jax(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "gpt3_jax", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    "yaml_text, overrides, expected",
    [
        ("model:\n  n_layers: 4\n", [], "model.n_layers"),  # unknown key (typo)
        ("modle:\n  n_layer: 4\n", [], "modle"),  # unknown section
        ("model:\n  n_layer: four\n", [], "model.n_layer"),  # wrong type
        ("model:\n  d_model: 64\n  n_head: 5\n", [], "model.n_head"),  # heads not dividing d_model
        ("model:\n  d_model: -64\n", [], "model.d_model"),  # negative size
        ("model: [1, 2\n", [], "YAML"),  # broken syntax
        ("- just a list\n", [], "mapping"),  # top level not a mapping
        (None, ["train.stepz=5"], "train.stepz"),  # unknown key in an override
        (None, ["model.n_layer=abc"], "model.n_layer"),  # wrong type in an override
        (None, ["model.n_layer"], "section.key=value"),  # malformed override
        (None, ["model.n_layer=3"], "model.n_layer"),  # not a whole number of [dense, local] repeats
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path: Path, yaml_text, overrides, expected) -> None:
    path = TINY
    if yaml_text is not None:
        path = str(tmp_path / "bad.yaml")
        Path(path).write_text(yaml_text)
    result = gpt3_jax("info", path, *overrides)
    assert result.returncode == 2, result.stderr
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    assert expected in err
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_config_file(tmp_path: Path) -> None:
    result = gpt3_jax("info", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    err = result.stderr.strip()
    assert err.startswith("error:") and "not found" in err and "\n" not in err


def test_good_config_with_override_exits_0() -> None:
    result = gpt3_jax("info", TINY, "model.n_layer=6", "--json")
    assert result.returncode == 0, result.stderr
    assert '"layers": 6' in result.stdout
