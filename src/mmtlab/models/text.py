"""Token + learned position embeddings, optionally layer-normalised (BERT's embeddings)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class TextEmbedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int, max_len: int, norm: bool = False, eps: float = 1e-5):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.norm = nn.LayerNorm(dim, eps=eps) if norm else None

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """`offset`: position of the first token (incremental decoding feeds one token at a time)."""
        n = offset + tokens.shape[1]
        if n > self.pos.shape[0]:
            raise ValueError(f"text of {n} tokens is longer than the model's max_len {self.pos.shape[0]}")
        x = self.tok(tokens) + self.pos[offset:n]
        return x if self.norm is None else self.norm(x)
