"""Objectives: one module per loss family, combined by weights from the run config.

An objective reads the forward passes it needs from a `StepContext`, which computes each pass
at most once per step: contrastive reads `step.embeddings` (clean unimodal passes), MLM reads
`step.masked` (joint pass over the image and the masked caption). Two objectives that need the
same pass share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from mmtlab.config import RunConfig
from mmtlab.objectives.contrastive import Contrastive, info_nce
from mmtlab.objectives.mlm import MLM, mask_tokens, mlm_loss

__all__ = ["Contrastive", "MLM", "Objectives", "StepContext", "build_objectives", "info_nce", "mask_tokens", "mlm_loss"]


@dataclass
class MaskedPass:
    inputs: Tensor  # token ids after masking
    labels: Tensor  # original ids at chosen positions, -100 elsewhere
    text_states: Tensor  # final text states of the joint forward [B, L, D]


class StepContext:
    """The forward passes of one training step, each computed on first use."""

    def __init__(self, model: nn.Module, batch, generator: torch.Generator, mask_prob: float = 0.15, dp=None):
        self.model = model
        self.batch = batch
        self.generator = generator
        self.mask_prob = mask_prob
        self.dp = dp  # train.distributed.DataParallel, or None in a single process

    @property
    def world(self) -> int:
        """Number of data-parallel processes sharing the global batch."""
        return 1 if self.dp is None else self.dp.world

    def gather(self, x: Tensor) -> tuple[Tensor, int]:
        """`x` [n, ...] of every data-parallel process concatenated along dim 0, and the row where
        this process's part starts; gradients flow back to each process's own rows. For losses over
        the global batch (contrastive negatives). In one process: (x, 0)."""
        return (x, 0) if self.dp is None else self.dp.all_gather_with_grad(x)

    @cached_property
    def embeddings(self) -> tuple[Tensor, Tensor]:
        b = self.batch
        return self.model.encode_image(b.images), self.model.encode_text(b.tokens, b.text_mask)

    @cached_property
    def masked(self) -> MaskedPass:
        b, t = self.batch, self.model.cfg.text
        inputs, labels = mask_tokens(
            b.tokens,
            b.text_mask,
            special_ids=(t.pad_id, t.cls_id, t.sep_id, t.mask_id),
            mask_id=t.mask_id,
            vocab_size=t.vocab_size,
            prob=self.mask_prob,
            generator=self.generator,
        )
        states = self.model(images=b.images, tokens=inputs, text_mask=b.text_mask)["text"]
        return MaskedPass(inputs, labels, states)


REGISTRY: dict[str, type[nn.Module]] = {"contrastive": Contrastive, "mlm": MLM}


class Objectives(nn.Module):
    """Weighted sum of the configured objectives; also reports each one's value."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.weights = {name: oc.weight for name, oc in cfg.objectives.items()}
        mlm = cfg.objectives.get("mlm")
        self.mask_prob = mlm.mask_prob if mlm is not None and mlm.mask_prob is not None else 0.15
        self.losses = nn.ModuleDict()
        for name in cfg.objectives:
            self.losses[name] = MLM(self.mask_prob) if name == "mlm" else REGISTRY[name]()

    def forward(self, model: nn.Module, batch, generator: torch.Generator, dp=None) -> tuple[Tensor, dict[str, Tensor]]:
        step = StepContext(model, batch, generator, self.mask_prob, dp)
        total, parts = 0.0, {}
        for name, fn in self.losses.items():
            value = fn(step)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        return total, parts


def build_objectives(cfg: RunConfig) -> Objectives:
    return Objectives(cfg)
