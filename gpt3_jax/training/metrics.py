"""What the trainer reports: JSON lines, trackers (TensorBoard, Weights & Biases), and model FLOPs
utilisation.

``WORKDIR/metrics.jsonl`` gets one JSON object per log step (and per eval), always; the trackers
of ``run.trackers`` get the same numbers: ``tensorboard`` writes event files beside the JSONL
(``tensorboard --logdir WORKDIR``; in a ``gs://`` workdir too),
``wandb`` logs to Weights & Biases (the ``wandb`` extra; its project is ``$WANDB_PROJECT`` or
``gpt3-jax``, one W&B run per workdir, continued on resume). On resume, lines past the restored
step are dropped (they describe a future that was never checkpointed), so the file always reads
as one consistent history; TensorBoard hides its events past that step likewise, and W&B plots
against ``step``, so the replayed steps overwrite nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
from typing import Any

from gpt3_jax import paths
from gpt3_jax.errors import UserError

# Dense bf16 peak FLOP/s per chip, keyed by a fragment of ``jax.devices()[0].device_kind``
# (lower-cased). The first fragment found wins, so more specific ones come first: TPU v5e calls
# itself "TPU v5 lite", v5p "TPU v5p" or plain "TPU v5", v6e "TPU v6 lite".
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("v5 lite", 197e12),  # TPU v5e
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v5", 459e12),  # "TPU v5": a v5p
    ("v6 lite", 918e12),  # TPU v6e (Trillium)
    ("v6e", 918e12),
    ("v4", 275e12),
    ("a100", 312e12),
    ("h100", 989e12),
    ("h200", 989e12),
)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one chip of this kind, or None when unknown (CPUs, other GPUs)."""
    kind = device_kind.lower()
    for fragment, peak in PEAK_FLOPS:
        if fragment in kind:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_sec: float, device_kind: str, n_devices: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s ÷ the devices' summed peak (None when the
    peak of ``device_kind`` is unknown)."""
    peak = peak_flops(device_kind)
    if peak is None:
        return None
    return flops_per_token * tokens_per_sec / (peak * n_devices)


def _clean(value: Any) -> Any:
    """Numbers JSON can hold: NaN/Inf become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class _BucketEventFile:
    """tensorboardX's record-writer interface over ``gpt3_jax.paths``, for an event file in a
    bucket: kept in memory and uploaded whole at each flush (an object cannot be appended to).
    Unlike tensorboardX's own gs:// writer it uses the same client and credentials as everything
    else here, and uploads nothing more once closed."""

    def __init__(self, path: str):
        self.path, self._buffer, self._closed = path, io.BytesIO(), False

    def write(self, data: bytes) -> None:
        self._buffer.write(data)

    def flush(self) -> None:
        if not self._closed:
            paths.write_bytes(self.path, self._buffer.getvalue())

    def close(self) -> None:
        self.flush()
        self._closed = True


class _BucketEventFiles:
    """The factory tensorboardX asks for the record writer of a path with a URL scheme."""

    def open(self, path: str) -> _BucketEventFile:
        return _BucketEventFile(path)

    def directory_check(self, path: str) -> None:
        pass  # a bucket has no folders to create


def _import_tensorboardx_without_torch() -> None:
    """tensorboardX, imported without PyTorch: it imports torch whenever torch is installed (for
    torch tensors we never pass it), which costs seconds of startup. A torch already imported is
    left alone, and once tensorboardX is imported there is nothing to do."""
    if "torch" not in sys.modules and "tensorboardX" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]


class _TensorBoard:
    def __init__(self, workdir: paths.Path, resume_step: int):
        _import_tensorboardx_without_torch()
        from tensorboardX import SummaryWriter, record_writer

        if paths.is_remote(workdir):  # event files in a bucket: written through gpt3_jax.paths
            record_writer.register_writer_factory(str(workdir).split("://")[0], _BucketEventFiles())
        # purge_step hides events past the restored step, as the JSONL is truncated
        self._tb = SummaryWriter(str(workdir), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


class _WandB:
    """One W&B run per workdir: its id is derived from the workdir, so a resume continues it."""

    def __init__(self, workdir: paths.Path, config: dict[str, Any]):
        try:
            import wandb
        except ImportError:
            raise UserError(
                "run.trackers has wandb but the wandb package is missing; "
                "pip install 'gpt3-jax[wandb]', or drop wandb from run.trackers"
            ) from None
        where = str(paths.absolute(workdir))
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "gpt3-jax"),
            name=paths.as_path(where).name,
            id=hashlib.sha256(where.encode()).hexdigest()[:16],
            resume="allow",
            config=config,
            dir=None if paths.is_remote(where) else where,  # W&B keeps its own files locally
        )
        self._run.define_metric("step")
        self._run.define_metric("*", step_metric="step")

    def write(self, step: int, values: dict[str, float]) -> None:
        self._run.log({"step": step, **values})

    def close(self) -> None:
        self._run.finish()


class MetricsWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and the trackers (process 0 only)."""

    def __init__(
        self,
        workdir: paths.PathLike,
        *,
        resume_step: int = 0,
        enabled: bool = True,
        trackers: tuple[str, ...] = ("tensorboard",),
        config: dict[str, Any] | None = None,
    ):
        workdir = paths.as_path(workdir)
        self.path = workdir / "metrics.jsonl"
        self.enabled = enabled
        self._trackers: list[_TensorBoard | _WandB] = []
        if not enabled:
            return
        self._truncate_after(resume_step)
        if "tensorboard" in trackers:
            self._trackers.append(_TensorBoard(workdir, resume_step))
        if "wandb" in trackers:
            self._trackers.append(_WandB(workdir, config or {}))

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill -9
        paths.write_text(self.path, "".join(f"{line}\n" for line in kept))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        paths.append_text(self.path, json.dumps(record) + "\n")
        for tracker in self._trackers:
            tracker.write(step, _scalars(values))

    def close(self) -> None:
        for tracker in self._trackers:
            tracker.close()
        self._trackers = []


def read_metrics(workdir: paths.PathLike) -> list[dict[str, Any]]:
    """All records of ``workdir/metrics.jsonl``, in order."""
    path = paths.as_path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
