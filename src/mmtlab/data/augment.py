"""Training-time image augmentation for image-caption pairs.

Only what keeps a caption true: a random resized crop (Inception / CLIP style, scale kept high so
the objects a caption names stay in view). No horizontal flips: they would turn "a cat to the left
of a dog" into a lie.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def random_resized_crop(
    images: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """Each image of float [B, C, H, W] cropped to a random box (area fraction uniform in `scale`,
    aspect ratio log-uniform in `ratio`) and resized back to H x W (bilinear), in one batched
    grid_sample."""
    b = images.shape[0]
    u = torch.rand(b, 4, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (1 - w) * u[:, 2] + w / 2  # box centre in [0, 1]
    cy = (1 - h) * u[:, 3] + h / 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def cropping(stack: Callable[[Sequence[Tensor]], Tensor], scale: tuple[float, float], seed: int):
    """`stack` (items -> a model-ready float batch) followed by a random resized crop of every image,
    from a generator seeded by `seed`."""
    g = torch.Generator().manual_seed(seed * 7_919 + 17)

    def crop_stack(items: Sequence[Tensor]) -> Tensor:
        return random_resized_crop(stack(items), scale, generator=g)

    return crop_stack
