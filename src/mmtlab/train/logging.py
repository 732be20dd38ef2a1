"""Run logging: metrics.jsonl (one JSON object per line), and by `train.loggers` TensorBoard events
and Weights & Biases (optional: `pip install wandb`; WANDB_MODE=offline logs without a network).

metrics.jsonl is strict JSON (RFC 8259, which has no NaN or Infinity): a non-finite number, such as
the loss of a diverged step, is written as null. TensorBoard still gets the number itself."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    def __init__(
        self,
        run_dir: Path,
        resume_step: int | None = None,
        tensorboard: bool = True,
        wandb: bool = False,
        config: dict | None = None,
    ):
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
        self.wandb = _wandb_run(Path(run_dir), config or {}) if wandb else None

    def log(self, step: int, **metrics: Any) -> None:
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None and numbers:
            self.wandb.log(numbers, step=step)

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _wandb_run(run_dir: Path, config: dict):
    """A W&B run for this run directory: one id kept in RUN_DIR/wandb_id, so --resume continues the
    same W&B run; files under RUN_DIR/wandb. The project is $WANDB_PROJECT or "mmtlab"."""
    import os
    import uuid

    try:
        import wandb
    except ImportError:
        from mmtlab.config import ConfigError

        raise ConfigError("train.loggers: wandb needs the wandb package (pip install wandb)") from None
    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "mmtlab"),
        name=run_dir.name,
        id=run_id,
        resume="allow",
        dir=str(run_dir),
        config=config,
    )


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
