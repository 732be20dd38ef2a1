"""Masked region modelling (ViLBERT, LXMERT, UNITER; VOLTA's targets): 15% of an image's regions
are chosen, their features zeroed (geometry kept, and left out of the global [IMG] mean), and the
model predicts from its output state at each chosen region

  mrm_cls      the detector's argmax class (cross-entropy; LXMERT/UNITER "MRC")
  mrm_kl       the detector's class distribution (KL(detector || model); ViLBERT, UNITER "MRC-kl")
  mrm_regress  the detector feature itself (MSE, or Huber = smooth L1; LXMERT/UNITER "MRFR")

each averaged over the chosen regions (the regression over their feature elements), as VOLTA does.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtlab.batches import Regions


def mask_regions(
    regions: Regions, prob: float, generator: torch.Generator | None = None, eligible: Tensor | None = None
) -> tuple[Regions, Tensor]:
    """Choose each real region with probability `prob` (only in `eligible` images [B], if given)
    and zero its feature. Returns the masked regions (with `.masked` set) and the choice [B, R]."""
    u = torch.rand(regions.mask.shape, generator=generator, device=regions.mask.device)
    chosen = regions.mask & (u < prob)
    if eligible is not None:
        chosen = chosen & eligible[:, None]
    return hide_regions(regions, chosen), chosen


def hide_regions(regions: Regions, chosen: Tensor) -> Regions:
    """The regions with the features at `chosen` [B, R] zeroed and marked `.masked` (left out of
    the global [IMG] mean; their boxes are kept), as MRM hides the regions it predicts."""
    return replace(regions, features=regions.features.masked_fill(chosen[..., None], 0.0), masked=chosen)


def mrm_cls_loss(logits: Tensor, detector_logits: Tensor) -> Tensor:
    """Mean cross-entropy to the detector's argmax class; both [N, C] over the chosen regions."""
    return F.cross_entropy(logits.float(), detector_logits.argmax(-1))


def mrm_kl_loss(logits: Tensor, detector_logits: Tensor, reduction: str = "mean") -> Tensor:
    """KL(p_detector || p_model) summed over classes; both [N, C]. reduction "mean": averaged over
    the N regions; "none": [N], one per region."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction {reduction!r}: choose mean or none")
    logp, target = F.log_softmax(logits.float(), -1), F.log_softmax(detector_logits.float(), -1)
    if reduction == "none":
        return F.kl_div(logp, target, log_target=True, reduction="none").sum(-1)
    return F.kl_div(logp, target, log_target=True, reduction="sum") / logits.shape[0]


def mrm_regress_loss(pred: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Mean over the chosen regions' feature elements of the squared (or smooth-L1) error."""
    if kind == "huber":
        return F.smooth_l1_loss(pred.float(), target.float())
    return F.mse_loss(pred.float(), target.float())


class _MRM(nn.Module):
    def forward(self, step) -> Tensor:
        joint = step.masked
        chosen = joint.region_chosen
        if chosen is None or not chosen.any():  # possible for a tiny batch: no region drawn
            return joint.image_states.sum() * 0.0
        # Image tokens are [IMG] then the regions, so region r is token r + 1.
        states = joint.image_states[:, 1:][chosen]
        clean = step.batch.images
        return self.loss(step.model.mrm, states, clean, chosen)


class MRMClassification(_MRM):
    name = "mrm_cls"

    def loss(self, head, states, clean: Regions, chosen) -> Tensor:
        return mrm_cls_loss(head.classes(head.transform(states)), clean.detector_logits()[chosen])


class MRMKL(_MRM):
    name = "mrm_kl"

    def loss(self, head, states, clean: Regions, chosen) -> Tensor:
        return mrm_kl_loss(head.classes(head.transform(states)), clean.detector_logits()[chosen])


class MRMRegression(_MRM):
    name = "mrm_regress"

    def __init__(self, kind: str = "mse"):
        super().__init__()
        self.kind = kind

    def loss(self, head, states, clean: Regions, chosen) -> Tensor:
        return mrm_regress_loss(head.features(head.transform(states)), clean.features[chosen], self.kind)
