"""Objectives: one module per loss family, combined by weights from the run config.

An objective reads the forward passes it needs from a `StepContext`, which computes each pass
at most once per step: contrastive reads `step.embeddings` (clean unimodal passes), MLM reads
`step.masked` (joint pass over the image and the masked caption), caption reads `step.caption`
(the generative pass of decoder families). Two objectives that need the same pass share it.
Passes run on first use and the objectives are visited in a fresh random order every step, so
a two-pass model (MaMMUT: contrastive and generative) runs its passes in shuffled order; the
weighted sum gets one backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from mmtlab.config import DECODER_ARCHS, RunConfig
from mmtlab.models.vision import random_crop_boxes
from mmtlab.objectives.caption import Caption, caption_loss, next_token_labels
from mmtlab.objectives.contrastive import Contrastive, info_nce
from mmtlab.objectives.mlm import MLM, mask_tokens, mlm_loss
from mmtlab.objectives.sigmoid import FocalContrastive, SigLIP, focal_sigmoid_loss, sigmoid_loss
from mmtlab.objectives.zloss import ZLoss, z_loss

__all__ = [
    "MLM",
    "Caption",
    "Contrastive",
    "FocalContrastive",
    "Objectives",
    "SigLIP",
    "StepContext",
    "ZLoss",
    "build_objectives",
    "caption_loss",
    "focal_sigmoid_loss",
    "info_nce",
    "mask_tokens",
    "mlm_loss",
    "next_token_labels",
    "sigmoid_loss",
    "z_loss",
]


@dataclass
class MaskedPass:
    inputs: Tensor  # token ids after masking
    labels: Tensor  # original ids at chosen positions, -100 elsewhere
    text_states: Tensor  # final text states of the joint forward [B, L, D]


@dataclass
class CaptionPass:
    logits: Tensor  # [B, L - 1, V]: position t predicts token t + 1
    labels: Tensor  # [B, L - 1]: token t + 1, or IGNORE (padding, VQA prompt)


class StepContext:
    """The forward passes of one training step, each computed on first use."""

    def __init__(self, model: nn.Module, batch, generator: torch.Generator, mask_prob: float = 0.15):
        self.model = model
        self.batch = batch
        self.generator = generator
        self.mask_prob = mask_prob

    @property
    def decoder(self) -> bool:
        return self.model.cfg.arch in DECODER_ARCHS

    @cached_property
    def pos_box(self) -> Tensor | None:
        """Cropped positional embeddings: one random crop of the positional grid per image, in training."""
        image = self.model.cfg.image
        if not (image.cpe and self.model.training):
            return None
        g = self.generator
        boxes = random_crop_boxes(len(self.batch), g, image.cpe_scale, image.cpe_ratio)
        return boxes.to(self.batch.images.device)

    @cached_property
    def image_tokens(self) -> Tensor:
        """Decoder families: the ViT's tokens, encoded once for both passes."""
        return self.model.image_tokens(self.batch.images, pos_box=self.pos_box)

    @cached_property
    def text_features(self) -> Tensor:
        """Decoder families: the contrastive text pass (no image; bidirectional for MaMMUT)."""
        return self.model.text_features(self.batch.tokens, self.batch.text_mask)

    @cached_property
    def embeddings(self) -> tuple[Tensor, Tensor]:
        b = self.batch
        if self.decoder:
            return self.model.embed_image(self.image_tokens), self.model.embed_text(self.text_features, b.text_mask)
        crops = {} if self.pos_box is None else {"pos_box": self.pos_box}
        return self.model.encode_image(b.images, **crops), self.model.encode_text(b.tokens, b.text_mask)

    @cached_property
    def contrastive_logits(self) -> Tensor:
        """Pairwise image-text logits [B, B] (scale * cosine + bias), in fp32."""
        image_emb, text_emb = self.embeddings
        return self.model.contrastive.logits(image_emb.float(), text_emb.float())

    @cached_property
    def caption(self) -> CaptionPass:
        """Decoder families: the generative pass (causal, cross-attention to the image)."""
        b = self.batch
        reuse = self.text_features if self.model.caption_continues_contrastive else None
        logits = self.model.caption_logits(self.image_tokens, b.tokens, text_features=reuse)[:, :-1]
        return CaptionPass(logits, next_token_labels(b.tokens, b.text_mask, b.target_mask))

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
        states = self.model(images=b.images, tokens=inputs, text_mask=b.text_mask, pos_box=self.pos_box)["text"]
        return MaskedPass(inputs, labels, states)


REGISTRY: dict[str, type[nn.Module]] = {
    "contrastive": Contrastive,
    "siglip": SigLIP,
    "focal_contrastive": FocalContrastive,
    "zloss": ZLoss,
    "mlm": MLM,
    "caption": Caption,
}


class Objectives(nn.Module):
    """Weighted sum of the configured objectives; also reports each one's value."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.weights = {name: oc.weight for name, oc in cfg.objectives.items()}
        mlm = cfg.objectives.get("mlm")
        self.mask_prob = mlm.mask_prob if mlm is not None and mlm.mask_prob is not None else 0.15
        self.losses = nn.ModuleDict()
        for name, oc in cfg.objectives.items():
            if name == "mlm":
                self.losses[name] = MLM(self.mask_prob)
            elif name == "focal_contrastive":
                self.losses[name] = FocalContrastive(1.0 if oc.gamma is None else oc.gamma)
            else:
                self.losses[name] = REGISTRY[name]()

    def forward(self, model: nn.Module, batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        step = StepContext(model, batch, generator, self.mask_prob)
        names = list(self.losses)
        if len(names) > 1:  # a fresh order each step: no pass always runs first
            order = torch.randperm(len(names), generator=generator, device=generator.device).tolist()
            names = [names[i] for i in order]
        total, parts = 0.0, {}
        for name in names:
            value = self.losses[name](step)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        return total, {name: parts[name] for name in self.losses}


def build_objectives(cfg: RunConfig) -> Objectives:
    return Objectives(cfg)
