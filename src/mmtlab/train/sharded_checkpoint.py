"""Checkpoints of multi-process runs (torch.distributed.checkpoint) that resume on any world size.

    checkpoints/step_N/
      dcp/*.safetensors   each rank's shards of the weights and optimizer state (DCP, safetensors storage)
      model.safetensors   the full weights, written by rank 0: eval, `mmtlab.load` and init_from read it
      state.json          loop state, optimizer hyper-parameters, "format": "dcp", the world size

DCP writes and reads slices: the shard offsets live in each safetensors file's metadata, so a run
saved by 2 FSDP ranks loads onto 1 process, onto N ddp ranks or N fsdp ranks, and nothing is
unpickled. The directory is written under a temporary name and renamed by rank 0 once every rank
has written its part, like single-process checkpoints (checkpoint.py); a single-process
checkpoint also resumes under torchrun (`load_full_checkpoint`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from mmtlab.io import atomic_write_json, honour_umask_tree
from mmtlab.train.checkpoint import (
    WRITE_ERRORS,
    CheckpointError,
    discard_checkpoint,
    prune_checkpoints,
    write_failure_message,
)
from mmtlab.train.distributed import DataParallel


def is_sharded(ckpt: Path) -> bool:
    return (Path(ckpt) / "dcp").is_dir()


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    dp: DataParallel,
    keep: int = 2,
) -> Path:
    """Collective: every rank calls it. Returns the checkpoint directory."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_dcp"  # one name for all ranks (they share the file system)
    if dp.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dp.barrier()
    error: BaseException | None = None
    try:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        writer = HuggingFaceStorageWriter(str(tmp / "dcp"), save_distributed=True)
        dcp.save({"model": model_sd, "optim": optim_sd["state"]}, storage_writer=writer)
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dp.is_main:
            save_file({k: v.contiguous() for k, v in full.items()}, tmp / "model.safetensors")
            meta = {"step": step, **state, "format": "dcp", "world": dp.world}
            meta["optimizer"] = {"param_groups": optim_sd["param_groups"]}
            atomic_write_json(tmp / "state.json", meta)
    except (*WRITE_ERRORS, dcp.api.CheckpointException) as e:
        error = e
    if dp.any(error is not None):
        if dp.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        dp.barrier()
        cause = error if error is not None else OSError("another rank could not write its shards")
        raise CheckpointError(write_failure_message(run_dir, step, cause)) from error
    if dp.is_main:
        honour_umask_tree(tmp)  # every rank's files: safetensors writes them 0600
        if final.exists():
            discard_checkpoint(final)
        os.replace(tmp, final)
        prune_checkpoints(run_dir, keep)  # renamed away before deletion: a kill leaves no half step_N
    dp.barrier()
    return final


def load_sharded_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a sharded checkpoint into this process's part of the model and optimizer, whatever the
    world size and parallelism it was saved with (one plain process included)."""
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "state.json").read_text())
    model_sd, optim_sd = get_state_dict(model, optimizer)  # this process's layout: DTensor shards or whole tensors
    state = {"model": model_sd, "optim": optim_sd["state"]}
    with warnings.catch_warnings():  # DCP warns that one process loads alone: here that is the point
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(ckpt / "dcp")), no_dist=_no_dist())
    optim = {"state": state["optim"], "param_groups": meta["optimizer"]["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=optim)
    return meta


def load_full_checkpoint(ckpt: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load a single-process checkpoint (checkpoint.py's format) into a replicated or sharded model:
    a run started on one machine continues under torchrun."""
    ckpt = Path(ckpt)
    meta = json.loads((ckpt / "state.json").read_text())
    weights = load_file(ckpt / "model.safetensors")
    name_of = {id(p): n for n, p in model.named_parameters()}
    order = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]  # optimizer index -> name
    state: dict[str, dict] = {}
    for key, v in load_file(ckpt / "optimizer.safetensors").items():
        idx, k = key.split(".", 1)
        state.setdefault(order[int(idx)], {})[k] = v
    for key, v in meta["optimizer"]["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(order[int(idx)], {})[k] = v
    groups = [{**g, "params": [order[i] for i in g["params"]]} for g in meta["optimizer"]["param_groups"]]
    set_state_dict(
        model,
        optimizer,
        model_state_dict=weights,
        optim_state_dict={"state": state, "param_groups": groups},
        options=StateDictOptions(full_state_dict=True),
    )
    return meta


def _no_dist() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())
