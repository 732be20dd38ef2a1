"""Per-block transformations applied from outside the model: activation checkpointing and
torch.compile (FSDP2 shards by the same blocks, see distributed.py).

A block is an element of an `nn.ModuleList` (a transformer layer: `FusionEncoder.layers`, and the
layer lists other model families keep), so new families get these switches without code of their
own. Both transformations act in place and keep parameter names, so checkpoints, `init_from` and
the optimizer see the same model with either switch on or off.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmtlab.config import TrainConfig


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """Elements of the model's ModuleLists that hold parameters (nested lists are looked into)."""
    blocks = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            for child in module:
                is_list = isinstance(child, nn.ModuleList | nn.ModuleDict)
                if not is_list and any(True for _ in child.parameters()):
                    blocks.append(child)
    return blocks


def checkpoint_block(block: nn.Module) -> None:
    """Recompute the block's activations in backward instead of storing them.

    Non-reentrant checkpointing restores the RNG state for the recomputation, so dropout masks
    (and therefore gradients) equal those without checkpointing.
    """
    forward = block.forward

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = checkpointed


def apply_block_options(model: nn.Module, cfg: TrainConfig) -> int:
    """Apply `train.activation_checkpointing` and `train.compile`; returns the number of blocks."""
    blocks = transformer_blocks(model)
    for block in blocks:
        if cfg.activation_checkpointing:
            checkpoint_block(block)
        if cfg.compile:
            block.compile()  # in place: the module keeps its parameters and their names
    return len(blocks)


def compile_available() -> bool:
    """Whether torch.compile's default backend can build kernels here (it needs a C++ compiler on CPU)."""
    try:
        f = torch.compile(lambda x: x * 2 + 1)
        return bool(torch.equal(f(torch.ones(2)), torch.full((2,), 3.0)))
    except Exception:  # noqa: BLE001 (any failure means: not available)
        return False
