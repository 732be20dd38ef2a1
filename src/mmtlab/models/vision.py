"""ViT patch embedding with a learned positional grid that can be resampled or cropped.

Resampling lets a model trained at one resolution run at another; cropping implements the
cropped positional embeddings (CPE) of MaMMUT / RO-ViT: during pretraining the model sees a random
region of an upsampled grid, so at a higher resolution it sees the whole grid without surprise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_pos_grid(pos: Tensor, out_hw: tuple[int, int], box: tuple[float, float, float, float] | None) -> Tensor:
    """Bicubically sample `pos` [D, G, G] over `box` (y0, x0, y1, x1 in [0, 1]) onto an out_hw grid.

    With box = whole grid this is interpolation to a new grid size; a sub-box is the CPE crop.
    """
    y0, x0, y1, x1 = box or (0.0, 0.0, 1.0, 1.0)
    h, w = out_hw
    # Cell centres of the output grid, mapped into the box, in grid_sample's [-1, 1] coordinates.
    ys = y0 + (y1 - y0) * (torch.arange(h, dtype=pos.dtype, device=pos.device) + 0.5) / h
    xs = x0 + (x1 - x0) * (torch.arange(w, dtype=pos.dtype, device=pos.device) + 0.5) / w
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1)[None]
    out = F.grid_sample(pos[None], grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out[0]


class PatchEmbedding(nn.Module):
    def __init__(self, image_size: int, patch_size: int, dim: int, channels: int = 3, cls_token: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.pos = nn.Parameter(torch.randn(dim, self.grid, self.grid) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02) if cls_token else None

    def pos_embed(self, hw: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> Tensor:
        """Positional embeddings [h*w, D] for an h x w patch grid (optionally over a CPE crop box)."""
        if box is None and hw == (self.grid, self.grid):
            pos = self.pos
        else:
            pos = sample_pos_grid(self.pos, hw, box)
        return pos.flatten(1).T

    def forward(self, images: Tensor, pos_box: tuple[float, float, float, float] | None = None) -> Tensor:
        b, _, h, w = images.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image of {h}x{w} px is not a multiple of the patch size {self.patch_size}")
        x = self.proj(images).flatten(2).transpose(1, 2)
        x = x + self.pos_embed((h // self.patch_size, w // self.patch_size), pos_box).to(x.dtype)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x
