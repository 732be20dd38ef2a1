"""Run logging: metrics.jsonl (one JSON object per line) and TensorBoard events.

metrics.jsonl is strict JSON (RFC 8259, which has no NaN or Infinity): a non-finite number, such as
the loss of a diverged step, is written as null. TensorBoard still gets the number itself."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Lines logged after the checkpoint we resume from describe steps that will be redone; a
            # line cut short by a killed process is dropped too.
            lines = self.path.read_text().splitlines()
            kept = [ln for ln in lines if _step_of(ln, default=resume_step + 1) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        self.file = self.path.open("a", buffering=1)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                self.tb = None

    def log(self, step: int, **metrics: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def strict_json(value: Any) -> Any:
    """`value` with every NaN / Infinity float (in dicts, lists and tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def _step_of(line: str, default: int) -> int:
    try:
        return json.loads(line).get("step", 0)
    except (json.JSONDecodeError, AttributeError):
        return default
