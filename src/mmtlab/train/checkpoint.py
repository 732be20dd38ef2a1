"""Atomic safetensors checkpoints: model weights, optimizer state and a small JSON of loop state.

A checkpoint is a directory `checkpoints/step_{N:08d}` written under a temporary name and renamed
into place, so every directory with that name is complete; resume takes the highest N (reading a
run directory's checkpoints: mmtlab/rundir.py). Nothing is
unpickled: tensors come from safetensors and the rest from JSON.

Pruning (and replacing) a checkpoint renames it to `.deleting_step_N_<pid>` before deleting it, so a
process killed halfway through the deletion never leaves a half-deleted `step_N` that looks valid;
`remove_partial_checkpoints` deletes what such a kill left.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mmtlab.io import atomic_write_json, honour_umask_tree
from mmtlab.rundir import (
    RunFileError,
    checkpoint_dirs,
    latest_checkpoint,
    load_model_weights,
    run_weights,
    shape_mismatches,
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (full disk, say); earlier checkpoints are intact."""


# What a failed write raises: OSError from Python's own I/O, SafetensorError from safetensors' (a
# full disk there reads "I/O error: No space left on device (os error 28)").
WRITE_ERRORS = (OSError, SafetensorError)


# errno values of a full or read-only disk: reported in one line with what is still safe
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO)


def write_failure_message(run_dir: Path, step: int | None, error: BaseException) -> str:
    last = latest_checkpoint(run_dir)
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    kept = f"the last complete checkpoint, {last}, is intact" if last else "no earlier checkpoint exists"
    what = (
        f"the checkpoint of step {step} in {Path(run_dir) / 'checkpoints'}"
        if step is not None
        else "to " + str(getattr(error, "filename", None) or run_dir)
    )
    return (
        f"could not write {what}: {reason}. "
        f"Training stopped; {kept}. Free space, then continue with `mmtlab train --resume --out {run_dir}`."
    )


def remove_partial_checkpoints(run_dir: Path) -> int:
    """Delete the directories a killed process left half-written or half-deleted; returns how many."""
    root = Path(run_dir) / "checkpoints"
    stale = [*root.glob(".tmp_step_*"), *root.glob(".deleting_*")] if root.is_dir() else []
    for d in stale:
        shutil.rmtree(d, ignore_errors=True)
    return len(stale)


def discard_checkpoint(ckpt: Path) -> None:
    """Delete a checkpoint directory: first renamed out of the `step_N` namespace (atomic), then
    removed, so an interrupted deletion leaves a `.deleting_*` directory that nothing loads."""
    ckpt = Path(ckpt)
    doomed = ckpt.with_name(f".deleting_{ckpt.name}_{os.getpid()}")
    try:
        os.replace(ckpt, doomed)
    except FileNotFoundError:
        return
    except OSError:  # e.g. a leftover `doomed` from a killed deletion of the same name
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(ckpt, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _loss_was_finite(ckpt: Path) -> bool:
    try:
        return json.loads((ckpt / "state.json").read_text()).get("loss_finite", True) is not False
    except (OSError, ValueError, AttributeError):
        return False


def last_finite_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose step had a finite loss. Every checkpoint holds finite weights
    (train/divergence.py never saves others); under `train.on_nonfinite: skip` one saved at a
    skipped step is marked `"loss_finite": false` in its state.json."""
    return next((d for d in reversed(checkpoint_dirs(run_dir)) if _loss_was_finite(d)), None)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints, and the last one whose loss was finite."""
    keep_too = last_finite_checkpoint(run_dir)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        if old != keep_too:
            discard_checkpoint(old)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        meta = {"step": step, **state}
        if optimizer is not None:
            tensors, opt_meta = _optimizer_tensors(optimizer)
            save_file(tensors, tmp / "optimizer.safetensors")
            meta["optimizer"] = opt_meta
        atomic_write_json(tmp / "state.json", meta)
        honour_umask_tree(tmp)  # safetensors writes 0600; a shared run must be readable as the umask says
        if final.exists():
            discard_checkpoint(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, WRITE_ERRORS):  # full disk, quota, permissions: say so, and what is still safe
            raise CheckpointError(write_failure_message(run_dir, step, e)) from e
        raise
    prune_checkpoints(run_dir, keep)
    return final


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Restore weights (and optimizer state); return the JSON state (it holds 'step')."""
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "state.json").read_text())
    load_model_weights(ckpt, model)
    if optimizer is not None and "optimizer" in meta:
        tensors = load_file(ckpt / "optimizer.safetensors")
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            idx, k = key.split(".", 1)
            state.setdefault(int(idx), {})[k] = v
        for key, v in meta["optimizer"]["scalars"].items():
            idx, k = key.split(".", 1)
            state.setdefault(int(idx), {})[k] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    return meta


def init_from(source: str | Path, model: nn.Module) -> int:
    """Initialise `model` from another run (its latest checkpoint) or a checkpoint directory.

    Tensors whose names and shapes match are copied; the rest keep their fresh initialisation (a
    new head, say). A ViT positional grid of another size is resampled to this model's (fine-tuning
    at a higher resolution, as after cropped-positional-embedding pretraining). Any other name
    that matches with a different shape is an error, as is no match at all.
    A run imported from a Hugging Face BERT / ViT / ViLT (`mmtlab import`) holds random tensors
    besides the imported ones; only those its imported.json lists are copied.
    Returns the number of tensors copied.
    """
    from mmtlab.models.vision import sample_pos_grid

    ckpt, weights = run_weights(source, "train.init_from")
    imported = imported_tensors(source)
    if imported is not None:
        weights = {k: v for k, v in weights.items() if k in imported}
    own = model.state_dict()
    for k, v in weights.items():
        if k.endswith("image_embed.pos") and k in own and v.dim() == 3 and v.shape[0] == own[k].shape[0]:
            weights[k] = sample_pos_grid(v, tuple(own[k].shape[1:]), None) if v.shape != own[k].shape else v
    bad = shape_mismatches(weights, own)
    if bad:
        raise RunFileError(f"train.init_from: {ckpt} has tensors of other shapes: {'; '.join(bad[:5])}")
    matched = {k: v for k, v in weights.items() if k in own}
    if not matched:
        raise RunFileError(f"train.init_from: no tensor of {ckpt} matches this model")
    model.load_state_dict(matched, strict=False)
    return len(matched)


def imported_tensors(source: str | Path) -> set[str] | None:
    """The tensors of an imported run that came from the published model (its imported.json
    "tensors"), or None: all of them (a trained run, a CLIP import, a checkpoint directory)."""
    f = Path(source) / "imported.json"
    if not f.is_file():
        return None
    try:
        names = json.loads(f.read_text()).get("tensors")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise RunFileError(f"train.init_from: {f} is not valid JSON ({e})") from None
    return None if names is None else set(names)


def describe_tensors(names: list[str]) -> str:
    """Tensor names summarised by module, layers collapsed: "encoder.layers.0-11.streams.shared
    (192), text_embed (4)"."""
    groups: dict[str, list[int]] = {}
    count: dict[str, int] = {}
    for n in names:
        m = re.match(r"(encoder\.layers)\.(\d+)\.(streams\.\w+)\.", n)
        key = f"{m[1]}.*.{m[3]}" if m else n.rsplit(".", 1)[0] if "." in n else n
        if key.startswith(("text_embed", "image_embed")):
            key = key.split(".")[0]
        groups.setdefault(key, []).append(int(m[2]) if m else -1)
        count[key] = count.get(key, 0) + 1
    parts = []
    for key, layers in groups.items():
        idx = sorted({i for i in layers if i >= 0})
        label = key.replace("*", f"{idx[0]}-{idx[-1]}" if len(idx) > 1 else str(idx[0])) if idx else key
        parts.append(f"{label} ({count[key]})")
    return ", ".join(parts)
