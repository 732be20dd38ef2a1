"""What a run does when its loss or gradient stops being a finite number (a diverged run).

`train.on_nonfinite: stop` (the default): the run ends at that step, before the update, with one
line naming the step and the last checkpoint. `skip`: the step's update is dropped (weights,
optimizer state and EMA teachers unchanged), the step is counted (`nonfinite_steps` in
metrics.jsonl and in each checkpoint) and training goes on with the next batch.

Either way no checkpoint of non-finite weights is ever written (`check_weights` runs before every
save and stops the run under both policies: skipping cannot repair weights that are already
broken). A checkpoint saved at a skipped step is marked `"loss_finite": false` in its state.json;
pruning always keeps the newest checkpoint not so marked (train/checkpoint.py), and that is the
one the stop message names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from mmtlab.train.checkpoint import CheckpointError, last_finite_checkpoint

POLICIES = ("stop", "skip")


class DivergedError(CheckpointError):
    """Training produced a non-finite loss, gradient or weights; the checkpoints on disk are finite.
    (A CheckpointError, so the command line prints it as one line and exits 2.)"""


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # an FSDP2 DTensor: this rank's shard


def tensors_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    flags = [torch.isfinite(_local(t)).all() for t in tensors if t is not None and _local(t).numel()]
    return bool(torch.stack(flags).all()) if flags else True


class NonFiniteGuard:
    """Checks each step before its update; `agree` makes all processes of a run decide alike
    (DataParallel.any). `skipped` is the count restored from a checkpoint on resume."""

    def __init__(
        self,
        policy: str = "stop",
        run_dir: str | Path | None = None,
        *,
        agree: Callable[[bool], bool] | None = None,
        skipped: int = 0,
        log=None,
    ):
        if policy not in POLICIES:
            raise ValueError(f"train.on_nonfinite: {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy, self.run_dir, self.skipped = policy, run_dir, int(skipped)
        self.last_ok = True  # the latest step's loss and gradient were finite
        self.agree = agree or (lambda flag: flag)
        self.log = log  # a MetricsLog: a stop is recorded as {"event": "diverged"} at its step

    def check(self, step: int, loss: float, grad_norm=None, params: Iterable[torch.nn.Parameter] = ()) -> str:
        """ "ok" to apply step `step`'s update, "skip" to drop it; raises DivergedError under "stop".
        The gradients of `params` are checked when no `grad_norm` was computed (no clipping)."""
        what = None
        if not math.isfinite(loss):
            what = f"the loss is {loss}"
        elif grad_norm is not None and not math.isfinite(float(grad_norm)):
            what = f"the gradient norm is {float(grad_norm)}"
        elif grad_norm is None and not tensors_finite(p.grad for p in params):
            what = "the gradient is not finite"
        self.last_ok = not self.agree(what is not None)
        if self.last_ok:
            return "ok"
        if self.policy == "skip":
            self.skipped += 1
            return "skip"
        self._stop(step, f"{what or 'another process: the loss is not finite'} at step {step}")

    def check_weights(self, step: int, model: torch.nn.Module) -> None:
        """Before a checkpoint: weights that are no longer finite are never saved (either policy)."""
        if self.agree(not tensors_finite(model.parameters())):
            self._stop(step, f"the weights are not finite after step {step}")

    def _stop(self, step: int, what: str):
        message = self._message(what)
        if self.log is not None:
            self.log.log(step, event="diverged", reason=message)
        raise DivergedError(message)

    def _message(self, what: str) -> str:
        last = last_finite_checkpoint(self.run_dir) if self.run_dir is not None else None
        kept = f"the last finite checkpoint, {last}, is kept" if last else "no checkpoint was written before it"
        return (
            f"training diverged: {what}; {kept}. Lower train.lr (or set train.on_nonfinite: skip to drop "
            "such steps) and train again."
        )

    def metrics(self) -> dict:
        """For metrics.jsonl: the number of dropped steps so far (under "skip", or once any was)."""
        return {"nonfinite_steps": self.skipped} if self.policy == "skip" or self.skipped else {}

    def state(self) -> dict:
        """For a checkpoint's state.json: the count, so a resumed run keeps it, and whether the
        step saved had a finite loss (pruning keeps the last such checkpoint)."""
        return ({"nonfinite_steps": self.skipped} if self.skipped else {}) | (
            {} if self.last_ok else {"loss_finite": False}
        )
