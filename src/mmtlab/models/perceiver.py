"""Flamingo's perceiver resampler (Alayrac et al. 2022, Sec. 2.1 and Fig. 5; OpenFlamingo's
`PerceiverResampler`): a fixed number of learned latents cross-attend to the visual features of
an image or video, so the LM's cross-attention always sees `latents` tokens per image, whatever
the encoder's grid size or the number of frames.

Per layer the latents' queries attend to keys/values computed from concat(features, latents) (the
latents also attend to themselves), then an FFN, both residual. Frames get a learned time
embedding before they are flattened into one set of features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtlab.models.layers import MLP, CrossAttention


class ResamplerLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_media = nn.LayerNorm(dim)
        self.ln_latents = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.ln_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        q = self.ln_latents(latents)
        kv = self.attn.project_kv(torch.cat([self.ln_media(features), q], dim=1))
        latents = latents + self.attn(q, kv)
        return latents + self.mlp(self.ln_mlp(latents))


class PerceiverResampler(nn.Module):
    """Features [B, T, N, in_dim] (T frames of N tokens; [B, N, in_dim] is one frame) -> [B, latents, dim]."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        heads: int,
        latents: int = 64,
        depth: int = 2,
        max_frames: int = 8,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        # The vision encoder's width may differ from the LM's: project once, then work at LM width.
        self.proj = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.02)
        self.time = nn.Parameter(torch.zeros(max_frames, dim))
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() == 3:
            features = features[:, None]
        b, t, n, _ = features.shape
        if t > self.time.shape[0]:
            raise ValueError(f"{t} frames exceed the resampler's {self.time.shape[0]} time embeddings (max_frames)")
        x = (self.proj(features) + self.time[:t, None]).reshape(b, t * n, -1)
        latents = self.latents.expand(b, -1, -1)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.norm(latents)
