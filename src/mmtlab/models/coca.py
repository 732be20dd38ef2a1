"""CoCa (Yu et al. 2022, "CoCa: Contrastive Captioners are Image-Text Foundation Models").

A ViT, causal unimodal text layers and multimodal layers that cross-attend to the image (layout:
`layouts.coca`). One text pass serves both losses: the unimodal states give the text embedding (at
the last real token, which has seen the whole caption; CoCa appends a [CLS] there, CLIP pools its
EOT token), and the multimodal layers continue from the same states to caption. The image side is
attention-pooled (CoCa's attentional poolers, as in open_clip): one learned query gives the
contrastive embedding; optionally `model.caption_queries` learned queries summarise the image for
the decoder (otherwise it attends to every image token).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.decoder import ImageTextDecoder
from mmtlab.models.layers import CrossAttention


class AttentionPool(nn.Module):
    """`n` learned queries attending to a set of tokens: [B, N, D] -> [B, n, D]."""

    def __init__(self, dim: int, heads: int, n: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n, dim) * 0.02)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        q = self.ln_q(self.queries).expand(tokens.shape[0], -1, -1)
        return self.norm(self.attn(q, self.attn.project_kv(self.ln_kv(tokens))))


class CoCa(ImageTextDecoder):
    contrastive_groups = ("unimodal",)
    contrastive_causal = True
    text_pool = "last"
    caption_groups = ("unimodal", "multimodal")
    caption_continues_contrastive = True

    def image_cls_token(self, cfg: ModelConfig) -> bool:
        return False  # the attention pooler replaces a [CLS] token

    def build_extra(self, cfg: ModelConfig) -> None:
        self.contrastive_pool = AttentionPool(cfg.width, cfg.heads, 1)
        self.caption_pool = AttentionPool(cfg.width, cfg.heads, cfg.caption_queries) if cfg.caption_queries else None

    def pool_image(self, tokens: Tensor) -> Tensor:
        return self.contrastive_pool(tokens)[:, 0]

    def caption_context(self, image_tokens: Tensor) -> Tensor:
        return image_tokens if self.caption_pool is None else self.caption_pool(image_tokens)
