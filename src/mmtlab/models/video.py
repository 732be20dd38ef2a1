"""MaMMUT's video encoder: TubeViT sparse tubes + sparse image patches into the one shared ViT.

(Kuo et al. 2023, Sec. 3.4, after Piergiovanni et al. 2023, "Rethinking video ViTs: sparse video
tubes".) A clip [B, T, C, H, W] becomes one token sequence for the image model's transformer:

- frame tokens: the image model's own patch embedding (its conv and learned 2D positions) on every
  `frame_stride`-th frame, plus a fixed sinusoidal time embedding so order is visible;
- tube tokens: one Conv3d per tube shape (several kernels and strides, each starting at an offset),
  applied sparsely — a few hundred tokens instead of a dense 3D patch grid — with fixed 3D
  sine-cosine position embeddings at each tube's centre, joined to the ViT's learned 2D positions
  (sampled at the same centre) by a learned gate: pos = fixed_3d + gate * learned_2d. The gate starts
  at 0, so a freshly added tube path does not disturb what the image ViT learned.

Nothing here is a transformer: `VideoEmbedding` only makes tokens, and the model runs them through
the same vision layers as images (`ImageTextDecoder.image_tokens`). The ablation arms of the paper
are config: `gate: false`, `fixed_pos: false`, `tubes: []` (frames only).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmtlab.config.sections import VideoConfig
from mmtlab.models.vision import PatchEmbedding, sample_pos_grid


def sincos(positions: Tensor, dim: int) -> Tensor:
    """Transformer sine-cosine embeddings [N, dim] of real-valued positions [N]."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angle = positions.float()[:, None] * freq[None]
    out = torch.cat([angle.sin(), angle.cos()], dim=1)
    return torch.nn.functional.pad(out, (0, dim - 2 * half))


def sincos_3d(tyx: Tensor, dim: int) -> Tensor:
    """Fixed 3D embeddings [N, dim] of (t, y, x) positions [N, 3]: a third of the channels each
    (the remainder to t), as in ViViT/TubeViT's separable 3D sine-cosine tables."""
    d = (dim // 3) // 2 * 2
    dt = dim - 2 * d
    return torch.cat([sincos(tyx[:, 0], dt), sincos(tyx[:, 1], d), sincos(tyx[:, 2], d)], dim=1)


class Tube(nn.Module):
    """One sparse tube shape: Conv3d(kernel, stride) from `offset`; tokens [B, N, D] and the centres
    [N, 3] (t, y, x in frames / pixels) that they cover."""

    def __init__(self, channels: int, dim: int, kernel, stride, offset):
        super().__init__()
        self.kernel, self.stride, self.offset = tuple(kernel), tuple(stride), tuple(offset)
        self.proj = nn.Conv3d(channels, dim, kernel_size=self.kernel, stride=self.stride)

    def grid(self, thw: tuple[int, int, int]) -> tuple[int, int, int]:
        n = tuple((s - o - k) // st + 1 for s, o, k, st in zip(thw, self.offset, self.kernel, self.stride, strict=True))
        if min(n) < 1:
            raise ValueError(f"tube kernel {self.kernel} from offset {self.offset} does not fit a {thw} clip")
        return n  # type: ignore[return-value]

    def centres(self, thw: tuple[int, int, int]) -> Tensor:
        axes = [o + k / 2 + st * torch.arange(n, dtype=torch.float32)
                for n, o, k, st in zip(self.grid(thw), self.offset, self.kernel, self.stride, strict=True)]  # fmt: skip
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)

    def forward(self, video: Tensor) -> Tensor:
        ot, oh, ow = self.offset
        x = self.proj(video[:, :, ot:, oh:, ow:])  # video [B, C, T, H, W] -> [B, D, t, h, w]
        return x.flatten(2).transpose(1, 2)


class VideoEmbedding(nn.Module):
    def __init__(self, cfg: VideoConfig, dim: int, channels: int):
        super().__init__()
        self.cfg = cfg
        self.dim = dim
        self.tubes = nn.ModuleList(Tube(channels, dim, t.kernel, t.stride, t.offset) for t in cfg.tubes)
        # The learned gate of the connection from the ViT's learned positions to the tubes (0 at start).
        self.gate = nn.Parameter(torch.zeros(())) if cfg.gate and cfg.tubes else None

    def tube_pos(self, tube: Tube, thw: tuple[int, int, int], patch: PatchEmbedding) -> Tensor:
        """Position embeddings [N, D] of one tube shape's tokens."""
        c = tube.centres(thw).to(patch.pos.device)
        pos = torch.zeros(len(c), self.dim, device=patch.pos.device)
        if self.cfg.fixed_pos:
            pos = pos + sincos_3d(c, self.dim)
        if self.gate is not None:
            # the learned 2D grid sampled at each tube's centre (a 1x1 "box" around it)
            h, w = thw[1:]
            ys, xs = c[:, 1] / h, c[:, 2] / w
            eps = 1e-3
            boxes = torch.stack([ys - eps, xs - eps, ys + eps, xs + eps], dim=1)
            learned = sample_pos_grid(patch.pos, (1, 1), boxes)[:, :, 0, 0]  # [N, D]
            pos = pos + self.gate * learned
        return pos

    def forward(self, video: Tensor, patch: PatchEmbedding) -> Tensor:
        """video [B, T, C, H, W] -> tokens [B, N, D] (cls first when the image model has one)."""
        b, t, _, h, w = video.shape
        parts = []
        if self.cfg.frame_stride is not None:
            frames = video[:, self.cfg.frame_start :: self.cfg.frame_stride]  # [B, t', C, H, W]
            tf = frames.shape[1]
            x = patch.proj(frames.flatten(0, 1)).flatten(2).transpose(1, 2)  # [B*t', n, D]
            n = x.shape[1]
            x = x + patch.pos_embed((h // patch.patch_size, w // patch.patch_size)).to(x.dtype)
            times = self.cfg.frame_start + torch.arange(tf, dtype=torch.float32) * self.cfg.frame_stride
            x = x + sincos(times, self.dim).to(x).repeat(b, 1)[:, None]  # fixed time of each frame
            parts.append(x.reshape(b, tf * n, self.dim))
        if self.tubes:
            v = video.transpose(1, 2)  # [B, C, T, H, W]
            for tube in self.tubes:
                parts.append(tube(v) + self.tube_pos(tube, (t, h, w), patch).to(v))
        x = torch.cat(parts, dim=1)
        if patch.cls is not None:
            x = torch.cat([patch.cls.expand(b, -1, -1).to(x.dtype), x], dim=1)
        return x

    def num_tokens(self, t: int, h: int, w: int, patch: int) -> int:
        stride, start = self.cfg.frame_stride, self.cfg.frame_start
        frames = len(range(start, t, stride)) * (h // patch) * (w // patch) if stride else 0
        return frames + sum(math.prod(tube.grid((t, h, w))) for tube in self.tubes)
