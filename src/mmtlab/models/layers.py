"""Transformer sub-layers: multi-head attention over a query set and a key set, and the MLP.

Everything here is modality-agnostic; `fusion.py` decides which tokens are queries and keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, heads: int, parts: int = 1) -> Tensor:
    """Projections [B, N, parts * D] -> [parts, B, H, N, D/H] (views, no copy); `parts` = 1 gives
    [B, H, N, D/H]. `parts` counts the projections packed in one matrix (3 for q, k, v)."""
    b, n, pd = x.shape
    out = x.view(b, n, parts, heads, pd // (parts * heads)).permute(2, 0, 3, 1, 4)
    return out[0] if parts == 1 else out


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, N, D/H] -> [B, N, D], the inverse of `split_heads` for one part."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, gelu: str = "exact"):
        super().__init__()
        # tanh: GPT-2's "gelu_new"; quick: CLIP's x * sigmoid(1.702 x) (approximate is then unused)
        self.approximate = {"exact": "none", "tanh": "tanh", "quick": "none"}[gelu]
        self.quick = gelu == "quick"
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.quick else F.gelu(h, approximate=self.approximate)
        return self.dropout(self.fc2(h))


class Attention(nn.Module):
    """Multi-head attention whose queries and keys/values may come from different token sets.

    `project_qkv` is separate from `attend` so a fusion layer can project every modality once
    with its own weights and then let each query modality attend over any concatenation of keys.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = split_heads(self.qkv(x), self.heads, 3)
        return q, k, v  # each [B, H, N, D/H]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool = False) -> Tensor:
        """`mask` is boolean [B, 1|H, Nq, Nk], True where a query may attend."""
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self.proj(merge_heads(out))


class CrossAttention(nn.Module):
    """Queries from one stream, keys/values from a context (decoder-style; MaMMUT, CoCa, Flamingo)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def project_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        k, v = split_heads(self.kv(context), self.heads, 2)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], mask: Tensor | None = None) -> Tensor:
        q = split_heads(self.q(x), self.heads)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask, dropout_p=p)
        if mask is not None:
            # A query with no visible key (Flamingo: text before the first image) gets exactly zero.
            out = out.masked_fill(~mask.any(-1, keepdim=True), 0.0)
        return self.proj(merge_heads(out))


def key_mask(
    key_masks: list[Tensor | None],
    key_lengths: list[int],
    causal_block: int | None,
    n_queries: int,
    device: torch.device,
) -> Tensor | None:
    """Boolean attention mask [B|1, 1, Nq, Nk] for keys that are a concatenation of blocks.

    `key_masks[i]` is [B, len_i] (True = real token) or None (no padding). `causal_block` is the
    index of the key block holding the queries themselves, which is masked causally (the queries
    are that block's tokens, so query i sees keys <= i). Other blocks are fully visible apart from
    padding. Returns None when nothing is masked, so SDPA can take its fastest path.
    """
    if causal_block is None and all(m is None for m in key_masks):
        return None
    batch = max([m.shape[0] for m in key_masks if m is not None] or [1])
    parts = []
    for i, (m, n) in enumerate(zip(key_masks, key_lengths, strict=True)):
        if i == causal_block:
            block = torch.ones(n_queries, n, dtype=torch.bool, device=device).tril()[None, None]
            if m is not None:
                block = block & m[:, None, None, :]
        elif m is not None:
            block = m[:, None, None, :]
        else:
            block = torch.ones(1, 1, 1, n, dtype=torch.bool, device=device)
        parts.append(block.expand(batch, 1, n_queries, n))
    return torch.cat(parts, dim=-1)


class KVCache:
    """Keys/values of past decoding steps, per layer: the text self-attention's grow by the new
    tokens at every step; the cross-attention's (image context) are computed on the first step and
    reused. `length` counts the tokens already processed (the position of the next one)."""

    def __init__(self):
        self.layers: dict[int, dict[str, Tensor]] = {}
        self.length = 0

    def layer(self, i: int) -> dict[str, Tensor]:
        return self.layers.setdefault(i, {})

    # Entries computed from the context alone (an image's cross-attention keys/values). Beam search
    # reorders beams only within their own batch item, where these rows are all the same.
    context_entries = ("cross_k", "cross_v")

    def expand(self, n: int) -> None:
        """A one-row cache as `n` identical rows (views; later steps' keys materialise them)."""
        for entry in self.layers.values():
            for k, t in entry.items():
                entry[k] = t.expand(n, *t.shape[1:])

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` of the self-attention keys/values (beam search: beams follow their
        parents within a batch item)."""
        for entry in self.layers.values():
            for k, t in entry.items():
                if k not in self.context_entries:
                    entry[k] = t.index_select(0, index)
