"""Pairwise sigmoid contrastive losses: every image-text pair of the batch is a binary problem
(positive on the diagonal), with learned scale and bias, so no softmax over the batch is needed.

- siglip: Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", Algorithm 1:
  L = -1/n * sum_ij log sigmoid(z_ij * (t * x_i . y_j + b)),  z_ij = +1 if i == j else -1.
- focal_contrastive: the same pairs with the focal modulation of Lin et al. 2017 ("Focal Loss for
  Dense Object Detection"), as used for image-text pretraining by RO-ViT (Kim et al. 2023, "Region-
  aware pretraining for open-vocabulary object detection with vision transformers", Sec. 3.2;
  google-research fvlm/rovit/focal_contrastive_loss.py) and MaMMUT:
  L = -1/n * sum_ij (1 - p_ij)^gamma * log p_ij,  p_ij = sigmoid(z_ij * logit_ij).
  RO-ViT's alpha weighting is left at its default 0.5 (equal weights, a factor of 1), and the sum
  is divided by the batch size as in SigLIP, so gamma = 0 gives exactly the siglip loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pair_signs(n: int, device=None, dtype=torch.float32) -> Tensor:
    """+1 on the diagonal (matching pairs), -1 elsewhere."""
    return 2 * torch.eye(n, device=device, dtype=dtype) - 1


def sigmoid_loss(logits: Tensor) -> Tensor:
    """SigLIP loss of square pairwise logits [n, n] whose diagonal holds the matching pairs."""
    z = pair_signs(logits.shape[0], logits.device, logits.dtype)
    return -F.logsigmoid(z * logits).sum() / logits.shape[0]


def focal_sigmoid_loss(logits: Tensor, gamma: float = 1.0) -> Tensor:
    """Focal sigmoid loss of square pairwise logits [n, n] (diagonal = matching pairs)."""
    zx = pair_signs(logits.shape[0], logits.device, logits.dtype) * logits
    # -log p = softplus(-zx) and (1 - p)^gamma = exp(-gamma * softplus(zx)): both stable for large |zx|.
    return (torch.exp(-gamma * F.softplus(zx)) * F.softplus(-zx)).sum() / logits.shape[0]


class SigLIP(nn.Module):
    name = "siglip"

    def forward(self, step) -> Tensor:
        return sigmoid_loss(step.contrastive_logits)


class FocalContrastive(nn.Module):
    name = "focal_contrastive"

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, step) -> Tensor:
        return focal_sigmoid_loss(step.contrastive_logits, self.gamma)
