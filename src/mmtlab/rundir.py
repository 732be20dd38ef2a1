"""A run directory's checkpoints, read without the training package: which exist, the latest,
its step number and its full weights. Models that load other runs' weights (Flamingo's frozen
parts), the API and the study runner read runs through here.

A checkpoint is a directory `RUN/checkpoints/step_{N:08d}`; only complete ones carry that name
(train/checkpoint.py writes them under a temporary name and renames them into place).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(ckpt: str | Path) -> int:
    """The optimizer step a checkpoint directory holds (`step_00000250` -> 250)."""
    m = _STEP_DIR.match(Path(ckpt).name)
    if m is None:
        raise ValueError(f"{ckpt}: not a checkpoint directory (step_NNNNNNNN)")
    return int(m.group(1))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def latest_step(run_dir: str | Path) -> int:
    """Steps the run has trained and checkpointed (0: none yet)."""
    ckpt = latest_checkpoint(run_dir)
    return 0 if ckpt is None else checkpoint_step(ckpt)


def run_weights(source: str | Path, field: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The full weights of a run's latest checkpoint (or of a checkpoint directory), and that
    checkpoint; `field` names the config field in the error when there is none."""
    source = Path(source)
    ckpt = latest_checkpoint(source) if (source / "checkpoints").is_dir() else source
    if not source.exists():
        raise FileNotFoundError(f"{field}: {source} does not exist (a run directory or a checkpoint directory)")
    if ckpt is None or not (ckpt / "model.safetensors").exists():
        raise FileNotFoundError(f"{field}: no checkpoint in {source}")
    return ckpt, read_weights(ckpt / "model.safetensors")


class RunFileError(ValueError):
    """A file of a run directory is missing, truncated or does not fit the model: one line naming it."""


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, or a RunFileError naming the file (empty, truncated, not
    safetensors)."""
    path = Path(path)
    try:
        return load_file(path)
    except FileNotFoundError:
        raise RunFileError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise RunFileError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())[:200]})") from None


def shape_mismatches(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """ "name (checkpoint shape) vs (model shape)" for every shared name whose shapes differ."""
    return [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]


def load_model_weights(ckpt: Path, model: nn.Module, strict: bool = True) -> None:
    """A checkpoint's weights into `model`: names and shapes must match, and every value must be
    finite (NaN weights would evaluate silently to chance)."""
    weights = read_weights(Path(ckpt) / "model.safetensors")
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if strict and (missing or unexpected):
        raise RunFileError(
            f"{ckpt}: checkpoint does not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    shapes = shape_mismatches(weights, own)
    if shapes:
        raise RunFileError(f"{ckpt}: tensors of other shapes than the model's: {'; '.join(shapes[:3])}")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise RunFileError(f"{ckpt}: non-finite (NaN/inf) values in {bad[:3]}; the run diverged before this checkpoint")
    model.load_state_dict(weights, strict=False)


LOCK_NAME = ".lock"  # held by the training process (train/lock.py); it holds the PID


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def training_pid(run_dir: str | Path) -> int | None:
    """The PID of a live process training in `run_dir` (from its lock file), else None: an eval of a
    run still in training reads an intermediate checkpoint, which the caller should say."""
    try:
        pid = int((Path(run_dir) / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and pid_alive(pid) else None
