"""A committed checkpoint damaged afterwards — an array file truncated, a file deleted, bytes
flipped — is caught at restore; the run says so in one warning line naming the step and goes on
from the previous complete checkpoint, ending bit for bit where an undamaged run ends. When no
step is usable the error says so and what to do. A checkpoint of another model is not damage.

In-process (``make test-faults``, about 1.5 minutes): one 6-step run saving at steps 2, 4 and 6
is copied and damaged for each case.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from faultlib import differences, final_params
from test_training import TextData, make_text_data, tiny_config
from test_training import compilation_cache as compilation_cache  # noqa: F401 - autouse fixture

from gpt3_jax.errors import UserError

pytestmark = pytest.mark.faults

OVERRIDES = ("train.steps=6", "checkpoint.every=2", "checkpoint.keep=3")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TextData:
    return make_text_data(tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def ref(data: TextData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpt3_jax.training.loop import train

    workdir = tmp_path_factory.mktemp("ref")
    train(tiny_config(workdir, data, *OVERRIDES), progress=False)
    return workdir


def _largest_array_file(step: Path) -> Path:
    return max((step / "params").rglob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def _truncate(step: Path) -> None:
    f = _largest_array_file(step)
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _delete(step: Path) -> None:
    _largest_array_file(step).unlink()


def _flip(step: Path) -> None:
    f = _largest_array_file(step)
    b = bytearray(f.read_bytes())
    for i in range(len(b) // 3, len(b) // 3 + 8):  # eight bytes in the middle of the array data
        b[i] ^= 0xFF
    f.write_bytes(bytes(b))


def _delete_data_state(step: Path) -> None:
    (step / "data" / "metadata").unlink()


def _change_a_checksum(step: Path) -> None:
    """The arrays read back fine but one differs from what was saved (as flipped bits in an
    uncompressed chunk would): only the digest can tell."""
    f = step / "digest" / "metadata"
    digest = json.loads(f.read_text())
    leaf = sorted(digest["params"])[0]
    digest["params"][leaf][2] = (digest["params"][leaf][2] + 1) % 2**32
    f.write_text(json.dumps(digest))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "array-file-truncated": _truncate,
    "array-file-deleted": _delete,
    "bytes-flipped": _flip,
    "data-state-deleted": _delete_data_state,
    "checksum-differs": _change_a_checksum,
}


def _copy(ref: Path, dest: Path) -> Path:
    shutil.copytree(ref, dest)
    return dest


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_and_the_run_ends_the_same(
    kind: str, ref: Path, data: TextData, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from gpt3_jax.training.loop import train

    workdir = _copy(ref, tmp_path / "run")
    DAMAGE[kind](workdir / "checkpoints" / "6")
    capsys.readouterr()
    summary = train(tiny_config(workdir, data, *OVERRIDES), progress=False)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    pattern = r"warning: checkpoint step 6 in \S+ is damaged \(.+\); falling back to step 4"
    assert re.fullmatch(pattern, warnings[0])
    assert summary["start_step"] == 4 and summary["steps"] == 6
    assert (workdir / "checkpoints" / "damaged-6").is_dir()  # kept for a look, out of Orbax's way
    assert not differences(final_params(workdir, 6), final_params(ref, 6))


def test_every_checkpoint_damaged_is_one_error_saying_what_to_do(
    ref: Path, data: TextData, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from gpt3_jax.training.loop import train

    workdir = _copy(ref, tmp_path / "run")
    for step, damage in zip((2, 4, 6), (_truncate, _delete, _flip), strict=True):
        damage(workdir / "checkpoints" / str(step))
    with pytest.raises(UserError) as exc:
        train(tiny_config(workdir, data, *OVERRIDES), progress=False)
    message = str(exc.value)
    assert "\n" not in message
    assert "no usable checkpoint" in message and all(f"step {s}:" in message for s in (2, 4, 6))
    assert "delete the damaged step folders" in message and "run.workdir" in message
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert [re.search(r"step (\d+) in", w).group(1) for w in warned] == ["6", "4"]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4", "6"]


def test_another_model_shape_is_not_damage(ref: Path, data: TextData, tmp_path: Path, capsys) -> None:
    from gpt3_jax.training.loop import train

    workdir = _copy(ref, tmp_path / "run")
    with pytest.raises(UserError, match=r"holds a run of another model \(parameter .* has shape"):
        train(tiny_config(workdir, data, *OVERRIDES, "model.d_model=16"), progress=False)
    assert "warning:" not in capsys.readouterr().err
    assert not any(p.name.startswith("damaged-") for p in (workdir / "checkpoints").iterdir())


def test_a_damaged_step_folder_named_directly_is_an_error(ref: Path, tmp_path: Path) -> None:
    from gpt3_jax.checkpoint import load_model

    workdir = _copy(ref, tmp_path / "run")
    _truncate(workdir / "checkpoints" / "6")
    with pytest.raises(UserError, match=r"checkpoint step 6 in .* is damaged .*use another step folder"):
        load_model(workdir)
    load_model(workdir / "checkpoints" / "4")  # the older step is fine
