"""Per-block transformations applied from outside the model: activation checkpointing and
torch.compile (FSDP2 shards by the same blocks, see distributed.py).

A block is an element of an `nn.ModuleList` (a transformer layer: `FusionEncoder.layers`, and the
layer lists other model families keep), so new families get these switches without code of their
own. Both transformations act in place and keep parameter names, so checkpoints, `init_from` and
the optimizer see the same model with either switch on or off.
"""

from __future__ import annotations

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


def apply_block_options(model: nn.Module, cfg: TrainConfig, compile_backend: str = "inductor") -> int:
    """Apply `train.activation_checkpointing` and `train.compile`; returns the number of blocks.

    Blocks are compiled one by one (as torchtitan does): a model's many forward passes per step
    (unimodal, joint, causal) reuse the same compiled blocks, and FSDP2 hooks stay around them.
    """
    blocks = transformer_blocks(model)
    for block in blocks:
        if cfg.activation_checkpointing:
            checkpoint_block(block)
        if cfg.compile:
            block.compile(backend=compile_backend)  # in place: the module keeps its parameters' names
    return len(blocks)
