"""ViT patch embedding with a learned positional grid that can be resampled or cropped.

Resampling lets a model trained at one resolution run at another; cropping implements the
cropped positional embeddings (CPE) of MaMMUT / RO-ViT: during pretraining the model sees a random
region of an upsampled grid, so at a higher resolution it sees the whole grid without surprise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Box = tuple[float, float, float, float] | Tensor


def sample_pos_grid(pos: Tensor, out_hw: tuple[int, int], box: Box | None) -> Tensor:
    """Bicubically sample `pos` [D, G, G] over `box` (y0, x0, y1, x1 in [0, 1]) onto an out_hw grid.

    With box = whole grid this is interpolation to a new grid size; a sub-box is the CPE crop.
    `box` may also be a tensor [B, 4] of one box per image; the result is then [B, D, h, w].
    Sampling the box straight from the learned grid is the same as RO-ViT's upsample-then-crop-and-
    resize, with the upsampling done continuously instead of on an intermediate grid.
    """
    per_image = isinstance(box, Tensor) and box.dim() == 2
    boxes = torch.as_tensor(box if box is not None else (0.0, 0.0, 1.0, 1.0), dtype=pos.dtype, device=pos.device)
    boxes = boxes.reshape(-1, 4)
    h, w = out_hw
    # Cell centres of the output grid, mapped into each box, in grid_sample's [-1, 1] coordinates.
    fy = (torch.arange(h, dtype=pos.dtype, device=pos.device) + 0.5) / h
    fx = (torch.arange(w, dtype=pos.dtype, device=pos.device) + 0.5) / w
    ys = boxes[:, 0, None] + (boxes[:, 2] - boxes[:, 0])[:, None] * fy  # [N, h]
    xs = boxes[:, 1, None] + (boxes[:, 3] - boxes[:, 1])[:, None] * fx  # [N, w]
    gy = (ys * 2 - 1)[:, :, None].expand(-1, h, w)
    gx = (xs * 2 - 1)[:, None, :].expand(-1, h, w)
    grid = torch.stack([gx, gy], dim=-1)
    source = pos[None].expand(len(boxes), *pos.shape)
    out = F.grid_sample(source, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out if per_image else out[0]


def random_crop_boxes(
    n: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.1, 1.0),
    ratio: tuple[float, float] = (0.5, 2.0),
) -> Tensor:
    """`n` random boxes [n, 4] (y0, x0, y1, x1) for CPE, drawn like Random Resized Crop: area
    fraction uniform in `scale`, aspect ratio (w/h) log-uniform in `ratio`. The ranges are RO-ViT's
    (Kim et al. 2023, "Region-aware pretraining for open-vocabulary object detection with vision
    transformers", Sec. 3.1: crop scale [0.1, 1], aspect ratio [0.5, 2])."""
    u = torch.rand(n, 4, generator=generator, device=None if generator is None else generator.device)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    y0, x0 = (1 - h) * u[:, 2], (1 - w) * u[:, 3]
    return torch.stack([y0, x0, y0 + h, x0 + w], dim=1)


def conv_stem(channels: int, dim: int, patch_size: int) -> nn.Sequential:
    """The convolutional stem of Xiao et al. 2021 ("Early convolutions help transformers see better",
    Sec. 3): log2(patch) 3x3 stride-2 convs with BatchNorm and ReLU, channels doubling up to dim/2,
    then a 1x1 conv to `dim`: the same [B, dim, H/p, W/p] output as the linear patchify it replaces."""
    n = patch_size.bit_length() - 1
    if patch_size < 2 or 1 << n != patch_size:
        raise ValueError(f"a conv stem needs a power-of-two patch size, got {patch_size}")
    layers: list[nn.Module] = []
    c_in = channels
    for i in range(n):
        c_out = max(16, dim >> (n - i))
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        c_in = c_out
    layers.append(nn.Conv2d(c_in, dim, kernel_size=1))
    return nn.Sequential(*layers)


class PatchEmbedding(nn.Module):
    def __init__(
        self,
        image_size: int,
        patch_size: int,
        dim: int,
        channels: int = 3,
        cls_token: bool = True,
        stem: str = "linear",
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        # "linear": one patch_size x patch_size stride-p conv (ViT's patchify); "conv": conv_stem.
        if stem == "conv":
            self.proj = conv_stem(channels, dim, patch_size)
        elif stem == "linear":
            self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        else:
            raise ValueError(f"image stem {stem!r}: choose linear or conv")
        self.pos = nn.Parameter(torch.randn(dim, self.grid, self.grid) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if cls_token else None

    def pos_embed(self, hw: tuple[int, int], box: Box | None = None) -> Tensor:
        """Positional embeddings [h*w, D] for an h x w patch grid (optionally over a CPE crop box;
        [B, h*w, D] for a tensor of one box per image)."""
        if box is None and hw == (self.grid, self.grid):
            pos = self.pos
        else:
            pos = sample_pos_grid(self.pos, hw, box)
        return pos.flatten(-2).transpose(-1, -2)

    def forward(self, images: Tensor, pos_box: Box | None = None) -> Tensor:
        b, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image of {h}x{w} px is not a multiple of the patch size {self.patch_size}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = x + self.pos_embed((h // self.patch_size, w // self.patch_size), pos_box).to(x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x
