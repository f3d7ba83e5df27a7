"""What the trainer reports: JSON lines, TensorBoard events, and model FLOPs utilisation.

``WORKDIR/metrics.jsonl`` gets one JSON object per log step (and per eval); TensorBoard event
files go beside it, so ``tensorboard --logdir WORKDIR`` shows the same numbers. On resume, lines
past the restored step are dropped (they describe a future that was never checkpointed), so the
file always reads as one consistent history.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# Dense bf16 peak FLOP/s per chip (/work/shared/ANCHORS.md), keyed by a fragment of
# ``jax.devices()[0].device_kind``. More specific fragments come first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("v5 lite", 197e12),  # TPU v5e
    ("v5e", 197e12),
    ("v5p", 459e12),
    ("v6 lite", 918e12),  # TPU v6e (Trillium)
    ("v6e", 918e12),
    ("v4", 275e12),
    ("h100", 989e12),
    ("h200", 989e12),
)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one chip of this kind, or None when unknown (CPUs, most GPUs)."""
    kind = device_kind.lower()
    for fragment, peak in PEAK_FLOPS:
        if fragment in kind:
            return peak
    return None


def mfu(flops_per_token: float, tokens_per_sec: float, device_kind: str, n_devices: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s ÷ the devices' summed peak."""
    peak = peak_flops(device_kind)
    if peak is None:
        return None
    return flops_per_token * tokens_per_sec / (peak * n_devices)


def _clean(value: Any) -> Any:
    """Numbers JSON can hold: NaN/Inf become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Appends metrics to ``workdir/metrics.jsonl`` and TensorBoard events (process 0 only)."""

    def __init__(self, workdir: str | Path, *, resume_step: int = 0, enabled: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter

        # purge_step hides events past the restored step, as _truncate_after does for the JSONL
        self._tb = SummaryWriter(str(self.path.parent), purge_step=resume_step + 1 if resume_step else None)

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
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                self._tb.add_scalar(key, value, step)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """All records of ``workdir/metrics.jsonl``, in order."""
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
