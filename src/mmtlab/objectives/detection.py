"""Set-prediction losses for detection (DETR, Carion et al. 2020; as OWL-ViT trains its heads).

Each image's ground-truth boxes are matched one-to-one to predicted tokens by the Hungarian
algorithm (scipy's linear_sum_assignment) on the cost

    cost = CLASS * focal_cost + L1 * |box - target|_1 - GIOU * GIoU(box, target)

(the class cost of Deformable DETR: the focal loss of calling the token that class minus the focal
loss of calling it background). The loss is then the sigmoid focal loss (Lin et al. 2017) of every
token x class against one-hot targets of the matched tokens (every other token is background for
every class), plus the L1 and GIoU (Rezatofighi et al. 2019) losses of the matched boxes; each
summed and divided by the number of target boxes in the batch. Weights 2 / 5 / 2 as in Deformable
DETR and OWL-ViT.

Boxes are (cx, cy, w, h) in [0, 1] of the image; GIoU is computed on their corners.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from mmtlab.data.boxes import box_area
from mmtlab.models.detector import cxcywh_to_xyxy


@dataclass(frozen=True)
class DetectionWeights:
    cls: float = 2.0
    l1: float = 5.0
    giou: float = 2.0
    alpha: float = 0.25  # focal loss: weight of positives
    gamma: float = 2.0  # focal loss: focusing exponent


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU [N, M] of xyxy boxes a [N, 4], b [M, 4]: IoU - (enclosing - union) / enclosing."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    iou = inter / union.clamp_min(1e-9)
    enclose = torch.maximum(a[:, None, 2:], b[None, :, 2:]) - torch.minimum(a[:, None, :2], b[None, :, :2])
    area = enclose.clamp_min(0).prod(-1)
    return iou - (area - union) / area.clamp_min(1e-9)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise focal loss: alpha_t (1 - p_t)^gamma * BCE(logits, targets), alpha_t = alpha for
    positives and 1 - alpha for negatives (RetinaNet; torchvision's sigmoid_focal_loss)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * ce


@torch.no_grad()
def match_cost(logits: Tensor, boxes: Tensor, labels: Tensor, targets: Tensor, w: DetectionWeights) -> Tensor:
    """The matching cost [N, M] of N predicted tokens (logits [N, C], boxes [N, 4] cxcywh) against M
    targets (labels [M] class indices, boxes [M, 4] cxcywh)."""
    p = torch.sigmoid(logits.float())[:, labels]  # [N, M]
    pos = w.alpha * (1 - p) ** w.gamma * -torch.log(p + 1e-8)
    neg = (1 - w.alpha) * p**w.gamma * -torch.log(1 - p + 1e-8)
    l1 = torch.cdist(boxes.float(), targets.float(), p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(targets.float()))
    return w.cls * (pos - neg) + w.l1 * l1 - w.giou * giou


@torch.no_grad()
def hungarian_match(
    logits: Tensor, boxes: Tensor, labels: Tensor, targets: Tensor, w: DetectionWeights = DetectionWeights()
) -> tuple[Tensor, Tensor]:
    """(token indices, target indices) of the minimum-cost one-to-one matching of one image."""
    if len(labels) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    cost = match_cost(logits, boxes, labels, targets, w).cpu().numpy()
    rows, cols = linear_sum_assignment(np.nan_to_num(cost, nan=1e6))
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def detection_loss(
    logits: Tensor, boxes: Tensor, targets: list[tuple[Tensor, Tensor]], w: DetectionWeights = DetectionWeights()
) -> dict[str, Tensor]:
    """logits [B, N, C], boxes [B, N, 4] cxcywh; targets: per image (labels [M] class indices,
    boxes [M, 4] cxcywh). Returns the weighted total `loss` and its parts `cls`, `l1`, `giou`
    (unweighted, each per target box)."""
    onehot = torch.zeros_like(logits)
    pred, true = [], []
    for i, (labels, tboxes) in enumerate(targets):
        rows, cols = hungarian_match(logits[i].detach(), boxes[i].detach(), labels, tboxes, w)
        onehot[i, rows.to(logits.device), labels[cols].to(logits.device)] = 1.0
        pred.append(boxes[i][rows.to(boxes.device)])
        true.append(tboxes[cols].to(boxes.device, boxes.dtype))
    n = max(1, sum(len(t[0]) for t in targets))
    cls = sigmoid_focal_loss(logits, onehot, w.alpha, w.gamma).sum() / n
    pred_b, true_b = torch.cat(pred), torch.cat(true)
    l1 = (pred_b - true_b).abs().sum() / n
    giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(pred_b), cxcywh_to_xyxy(true_b)))).sum() / n
    return {"loss": w.cls * cls + w.l1 * l1 + w.giou * giou, "cls": cls, "l1": l1, "giou": giou}
