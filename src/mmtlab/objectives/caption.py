"""Captioning (next-token prediction) for decoder families: cross-entropy of each token given the
image and the tokens before it. Positions whose target is padding, or not a target at all (a VQA
prompt: `Batch.target_mask`), are ignored."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def next_token_labels(tokens: Tensor, text_mask: Tensor, target_mask: Tensor | None = None) -> Tensor:
    """Labels [B, L - 1] aligned with logits[:, :-1]: token t + 1, or IGNORE where it is no target."""
    valid = text_mask[:, 1:] if target_mask is None else text_mask[:, 1:] & target_mask[:, 1:]
    return tokens[:, 1:].masked_fill(~valid, IGNORE)


def caption_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy (nats) over labelled positions, their mean or ("sum") their total; `logits`
    [B, T, V] aligned with `labels` [B, T]."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE, reduction=reduction)


class Caption(nn.Module):
    name = "caption"

    def forward(self, step) -> Tensor:
        c = step.caption
        return caption_loss(c.logits, c.labels)
