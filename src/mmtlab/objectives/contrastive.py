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


def local_info_nce(
    image_emb: Tensor, text_emb: Tensor, all_image: Tensor, all_text: Tensor, offset: int, scale: Tensor | float
) -> Tensor:
    """open_clip's local loss: this process's images against every process's texts and its texts
    against every image; its pairs are rows `offset...` of the gathered ones. The mean over processes
    of this loss is `info_nce` of the global batch (equal batch sizes), and so is its gradient."""
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
    image_to_text = F.cross_entropy(scale * image_emb @ all_text.T, labels)
    text_to_image = F.cross_entropy(scale * text_emb @ all_image.T, labels)
    return (image_to_text + text_to_image) / 2


class Contrastive(nn.Module):
    name = "contrastive"

    def forward(self, step) -> Tensor:
        image_emb, text_emb = step.embeddings
        image_emb, text_emb, scale = image_emb.float(), text_emb.float(), step.model.contrastive.scale()
        if step.world == 1:
            return info_nce(image_emb, text_emb, scale)
        (all_image, offset), (all_text, _) = step.gather(image_emb), step.gather(text_emb)
        return local_info_nce(image_emb, text_emb, all_image, all_text, offset, scale)
