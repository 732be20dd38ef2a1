"""Output heads: contrastive projection, masked-language-model head, pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pool(x: Tensor, mask: Tensor | None, how: str) -> Tensor:
    """'cls': first token; 'mean': mean over real (unpadded) tokens; 'last': the last real token
    (CLIP's end-of-text token, when the text is [start] ... [end] [pad]...)."""
    if how == "cls":
        return x[:, 0]
    if how == "last":
        if mask is None:
            return x[:, -1]
        last = mask.long().sum(1).sub(1).clamp_min(0)
        return x[torch.arange(len(x), device=x.device), last]
    if mask is None:
        return x.mean(1)
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class ContrastiveHead(nn.Module):
    """Linear projections to a joint space and the learned temperature of CLIP.

    The logit scale starts at 1/0.07 and is clamped at 100, as in CLIP / open_clip. Sigmoid losses
    (SigLIP, focal) also learn a logit bias (`init_bias`, -10 in SigLIP); softmax losses ignore it.
    """

    max_scale = 100.0

    def __init__(
        self,
        dim: int,
        embed_dim: int,
        init_scale: float = 1 / 0.07,
        init_bias: float | None = None,
        image_dim: int | None = None,
    ):
        super().__init__()
        self.text_proj = nn.Linear(dim, embed_dim, bias=False)
        self.image_proj = nn.Linear(image_dim or dim, embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(init_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_bias))) if init_bias is not None else None

    def scale(self) -> Tensor:
        return self.logit_scale.exp().clamp(max=self.max_scale)

    def logits(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Pairwise logits [n_images, n_texts]: scale * cosine (+ bias)."""
        logits = self.scale() * image_emb @ text_emb.T
        return logits if self.logit_bias is None else logits + self.logit_bias

    def embed_text(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.text_proj(pooled), dim=-1)

    def embed_image(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.image_proj(pooled), dim=-1)


class MLMHead(nn.Module):
    """BERT's transform (dense, GELU, LayerNorm) and a decoder tied to the token embedding."""

    def __init__(self, dim: int, vocab_size: int, eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: Tensor, token_embedding: Tensor) -> Tensor:
        # The embedding matrix is passed in rather than held, so the checkpoint stores it once.
        return F.linear(self.norm(F.gelu(self.dense(x))), token_embedding, self.bias)


class ITMHead(nn.Module):
    """Image-text matching logit of a pair from its pooled text and image states: a BERT pooler
    (dense + tanh) per stream, their element-wise product, then a linear classifier (ViLBERT's
    "mul" fusion). The product gives every layout a path: single-stream models read fused
    states, and a dual encoder still learns a (weighted) dot product of its two embeddings."""

    def __init__(self, dim: int):
        super().__init__()
        self.text_pool = nn.Linear(dim, dim)
        self.image_pool = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 1)

    def forward(self, text_pooled: Tensor, image_pooled: Tensor) -> Tensor:
        fused = torch.tanh(self.text_pool(text_pooled)) * torch.tanh(self.image_pool(image_pooled))
        return self.classifier(fused).squeeze(-1)


class MRMHead(nn.Module):
    """Masked region modelling: BERT's transform, then detector-class logits (mrm_cls, mrm_kl) and
    a regression of the region's detector feature (mrm_regress)."""

    def __init__(self, dim: int, num_classes: int, feature_dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.classes = nn.Linear(dim, num_classes)
        self.features = nn.Linear(dim, feature_dim)

    def transform(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(x)))
