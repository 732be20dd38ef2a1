"""Axis-aligned boxes: overlap measures and the 5-d region geometry of VOLTA-style models.

Boxes are (x1, y1, x2, y2) in pixels with exclusive x2/y2 (the emoji-scenes and Pillow
convention), so a box's area is (x2 - x1) * (y2 - y1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp_min(0) * (boxes[..., 3] - boxes[..., 1]).clamp_min(0)


def box_intersection(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise intersection areas [N, M] of boxes a [N, 4] and b [M, 4]."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    return wh[..., 0] * wh[..., 1]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union [N, M]; 0 where both boxes are empty."""
    inter = box_intersection(a, b)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def box_iot(regions: Tensor, targets: Tensor) -> Tensor:
    """Intersection over *target* area [N, M] (Frank et al. 2021): how much of target box m a
    region n covers. A small region inside a large target scores low; a large region covering the
    whole target scores 1."""
    inter = box_intersection(regions, targets)
    area = box_area(targets)[None, :]
    return torch.where(area > 0, inter / area.clamp_min(1e-12), torch.zeros_like(inter))


def box_geometry(boxes: Tensor, width: float | Tensor, height: float | Tensor) -> Tensor:
    """[..., 4] pixel boxes -> [..., 5] (x1/W, y1/H, x2/W, y2/H, area / (W*H)), as in ViLBERT/VOLTA.
    `width`/`height` are numbers or tensors that broadcast against boxes[..., 0] (e.g. [B, 1])."""
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([x1 / w, y1 / h, x2 / w, y2 / h, box_area(boxes) / (w * h)], dim=-1)
