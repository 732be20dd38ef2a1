"""Symmetric InfoNCE (CLIP): each image against every caption of the batch and vice versa."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def info_nce(image_emb: Tensor, text_emb: Tensor, scale: Tensor | float) -> Tensor:
    """Mean of image->text and text->image cross-entropy; pair i is the positive for row/column i."""
    logits = scale * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class Contrastive(nn.Module):
    name = "contrastive"

    def forward(self, step) -> Tensor:
        image_emb, text_emb = step.embeddings
        return info_nce(image_emb.float(), text_emb.float(), step.model.contrastive.scale())
