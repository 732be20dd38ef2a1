"""A run directory's checkpoints, read without the training package: which exist, the latest,
its step number and its full weights. Models that load other runs' weights (Flamingo's frozen
parts), the API and the study runner read runs through here.

A checkpoint is a directory `RUN/checkpoints/step_{N:08d}`; only complete ones carry that name
(train/checkpoint.py writes them under a temporary name and renames them into place).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
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
    if ckpt is None or not (ckpt / "model.safetensors").exists():
        raise FileNotFoundError(f"{field}: no checkpoint in {source}")
    return ckpt, load_file(ckpt / "model.safetensors")


def load_model_weights(ckpt: Path, model: nn.Module, strict: bool = True) -> None:
    weights = load_file(Path(ckpt) / "model.safetensors")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if strict and (missing or unexpected):
        raise ValueError(
            f"{ckpt}: checkpoint does not match the model (missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
