"""Speech front end: wav2vec 2.0's convolutional feature encoder, scaled down, and its
convolutional positional embedding.

Raw 16 kHz waveform [B, T] -> conv stack (kernel 10 stride 5, then 3/2 x4, then 2/2 x2: one
frame per 20 ms) with a LayerNorm over channels and GELU after each conv (fairseq's
extractor_mode="layer_norm", which data2vec audio uses) -> LayerNorm -> Linear to the model width.
Positions come from a grouped 1-d convolution over the frames added to them (wav2vec 2.0's
pos_conv), so utterances of any length need no position table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtlab.config import SpeechConfig


class ConvFeatureEncoder(nn.Module):
    def __init__(self, layers: list[tuple[int, int, int]]):
        super().__init__()
        self.layers = list(layers)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        channels = 1
        for c, k, s in self.layers:
            self.convs.append(nn.Conv1d(channels, c, k, stride=s, bias=False))
            self.norms.append(nn.LayerNorm(c))
            channels = c
        self.out_channels = channels

    def output_lengths(self, samples: Tensor) -> Tensor:
        """Frames produced from `samples` input samples (the conv arithmetic, no padding)."""
        n = samples.clone()
        for _, k, s in self.layers:
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return n.clamp_min(0)

    def forward(self, wave: Tensor) -> Tensor:
        """[B, T] -> [B, F, C]."""
        x = wave[:, None]
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x).transpose(1, 2)).transpose(1, 2))
        return x.transpose(1, 2)


class SpeechEmbedding(nn.Module):
    """`local` (conv features projected to the model width) and `add_positions` are separate, so
    data2vec can put its mask embedding between them, as wav2vec 2.0 masks before pos_conv."""

    def __init__(self, cfg: SpeechConfig, dim: int):
        super().__init__()
        if dim % cfg.conv_pos_groups:
            raise ValueError(f"speech.conv_pos_groups {cfg.conv_pos_groups} must divide the width {dim}")
        self.features = ConvFeatureEncoder(cfg.conv_layers)
        self.norm = nn.LayerNorm(self.features.out_channels)
        self.proj = nn.Linear(self.features.out_channels, dim)
        k = cfg.conv_pos_kernel
        self.pos_conv = nn.Conv1d(dim, dim, k, padding=k // 2, groups=cfg.conv_pos_groups)

    def local(self, wave: Tensor) -> Tensor:
        return self.proj(self.norm(self.features(wave)))

    def add_positions(self, x: Tensor) -> Tensor:
        pos = self.pos_conv(x.transpose(1, 2))[..., : x.shape[1]]  # an even kernel yields one extra frame
        return x + F.gelu(pos).transpose(1, 2)

    def frame_mask(self, sample_mask: Tensor | None, frames: int) -> Tensor | None:
        """Boolean [B, F] (True = a frame computed from real samples), or None without padding."""
        if sample_mask is None or bool(sample_mask.all()):
            return None
        n = self.features.output_lengths(sample_mask.sum(1))
        return torch.arange(frames, device=sample_mask.device)[None, :] < n[:, None]

    def forward(self, wave: Tensor) -> Tensor:
        return self.add_positions(self.local(wave))
