"""z-loss on the contrastive logits: the squared log-normaliser, log^2 sum_j exp(logit_ij), of
every row and column, so the logits cannot drift to large magnitudes (PaLM, Chowdhery et al. 2022,
Sec. 5, uses 1e-4 * log^2 Z on the LM softmax; ST-MoE's router z-loss is the same idea). Its
objective weight is the coefficient, e.g. `zloss: 1.0e-4`."""

from __future__ import annotations

from torch import Tensor, nn


def z_loss(logits: Tensor) -> Tensor:
    """Mean of log^2 Z over the rows (image -> text) and the columns (text -> image) of [n, n] logits."""
    return (logits.logsumexp(1).square().mean() + logits.logsumexp(0).square().mean()) / 2


class ZLoss(nn.Module):
    name = "zloss"

    def forward(self, step) -> Tensor:
        return z_loss(step.contrastive_logits)
