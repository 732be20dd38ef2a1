"""The fusion encoder: one transformer layer type, many attention layouts, described by data.

A model's attention layout is a list of `LayerSpec`. Each layer holds a dict of token streams
(`{"text": [B, Lt, D], "image": [B, Li, D]}`); `attend` says which streams a query stream sees
as keys. Streams a layer does not name pass through it unchanged, and a stream missing from the
input (a text-only forward) is simply skipped, so `encode_text` of a dual encoder runs the same
layers as the joint forward. The published layouts are presets in layouts.py.

Blocks are pre-LN (a LayerNorm before each sub-layer; GPT-2, ViT, CLIP, ViLT) unless `post_norm`
(BERT: the LayerNorm after each residual sum, `model.post_norm`); `eps` is the LayerNorms'
epsilon (BERT and Hugging Face's ViT / ViLT: 1e-12, `model.norm_eps`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from mmtlab.models.layers import MLP, Attention, CrossAttention, KVCache, key_mask
from mmtlab.models.layouts import PRESETS, LayerSpec, build_layout, modality_specific, unimodal_prefix

# The layouts live in layouts.py; these names are read from here too.
__all__ = [
    "PRESETS",
    "FusionEncoder",
    "FusionLayer",
    "LayerSpec",
    "build_layout",
    "modality_specific",
    "unimodal_prefix",
]


class Stream(nn.Module):
    """One set of sub-layer weights: used by one stream, or shared by all. Pre-LN, or post-LN
    with `post_norm` (then each LayerNorm normalises its sub-layer's residual sum, not its input)."""

    def __init__(
        self,
        spec: LayerSpec,
        dim: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        updates: bool,
        gelu: str,
        eps: float = 1e-5,
        post_norm: bool = False,
    ):
        super().__init__()
        self.post_norm = post_norm
        self.ln_attn = nn.LayerNorm(dim, eps=eps) if spec.attend else None
        self.attn = Attention(dim, heads, dropout) if spec.attend else None
        has_cross = spec.cross_attention is not None and updates
        self.ln_cross = nn.LayerNorm(dim, eps=eps) if has_cross else None
        self.ln_context = nn.LayerNorm(dim, eps=eps) if has_cross else None
        self.cross = CrossAttention(dim, heads, dropout) if has_cross else None
        has_ffn = spec.ffn and updates
        self.ln_mlp = nn.LayerNorm(dim, eps=eps) if has_ffn else None
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout, gelu) if has_ffn else None
        gated = spec.cross_attention == "gated_tanh" and updates
        self.cross_gate = nn.Parameter(torch.zeros(1)) if gated and has_cross else None
        self.mlp_gate = nn.Parameter(torch.zeros(1)) if gated and has_ffn else None

    def sublayer_input(self, norm: nn.LayerNorm, x: Tensor) -> Tensor:
        """What a sub-layer reads: its LayerNorm of the stream (pre-LN), or the stream itself (post-LN)."""
        return x if self.post_norm else norm(x)

    def residual(self, norm: nn.LayerNorm, x: Tensor, h: Tensor) -> Tensor:
        """The stream after a sub-layer's output `h`: x + h (pre-LN), or LayerNorm(x + h) (post-LN)."""
        return norm(x + h) if self.post_norm else x + h


def _gate(g: nn.Parameter | None) -> Tensor | float:
    return 1.0 if g is None else torch.tanh(g)


# A stream's own (width, heads, MLP ratio), where it differs from the model's (CLIP's towers).
Sizes = Mapping[str, tuple[int, int, float]]


class FusionLayer(nn.Module):
    def __init__(
        self,
        spec: LayerSpec,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gelu: str = "exact",
        sizes: Sizes | None = None,
        eps: float = 1e-5,
        post_norm: bool = False,
    ):
        super().__init__()
        self.spec = spec
        if post_norm and spec.cross_attention:
            raise ValueError(f"post-LN blocks (BERT's) have no cross-attention sub-layer: {spec}")
        size = {**dict.fromkeys((*spec.updated, *spec.keyed), (dim, heads, mlp_ratio)), **(sizes or {})}
        norms = {"eps": eps, "post_norm": post_norm}
        if spec.weights == "shared":
            self.streams = nn.ModuleDict({"shared": Stream(spec, dim, heads, mlp_ratio, dropout, True, gelu, **norms)})
        else:
            owners = dict.fromkeys((*spec.updated, *spec.keyed))
            self.streams = nn.ModuleDict(
                {
                    m: Stream(spec, size[m][0], size[m][1], size[m][2], dropout, m in spec.updated, gelu, **norms)
                    for m in owners
                }
            )
        mixed = [(q, k) for q, ks in spec.attend.items() for k in ks if q in size and size[q][:2] != size[k][:2]]
        if sizes and (spec.weights == "shared" or spec.cross_attention or mixed):
            raise ValueError(f"streams of their own width or heads ({dict(sizes)}) must never meet: {spec}")
        if spec.frozen:
            self.requires_grad_(False)

    def stream(self, m: str) -> Stream:
        return self.streams["shared"] if self.spec.weights == "shared" else self.streams[m]

    def forward(
        self,
        x: dict[str, Tensor],
        pad: Mapping[str, Tensor | None],
        causal_text: bool | None = None,
        cross_attention: bool = True,
        cross_mask: Tensor | None = None,
        cache: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """`cache` (decoding): this layer's entry of a KVCache; `x["text"]` then holds only the new
        tokens, which attend to the cached keys of earlier steps as well as to each other."""
        spec = self.spec
        causal = spec.causal_text if causal_text is None else causal_text
        out = dict(x)
        queries = [q for q in spec.attend if q in x]
        if queries:
            needed = dict.fromkeys(queries + [k for q in queries for k in spec.attend[q] if k in x])
            streams = {m: self.stream(m) for m in needed}
            qkv = {m: s.attn.project_qkv(s.sublayer_input(s.ln_attn, x[m])) for m, s in streams.items()}
            for q in queries:
                keys = [k for k in spec.attend[q] if k in x]
                if not keys:
                    continue
                s = self.stream(q)
                if cache is not None:
                    out[q] = s.residual(s.ln_attn, x[q], self._cached_attention(q, keys, qkv, causal, pad, cache))
                    continue
                if len(keys) == 1:  # no concatenation, no copy
                    k_cat, v_cat = qkv[keys[0]][1], qkv[keys[0]][2]
                else:
                    k_cat = torch.cat([qkv[k][1] for k in keys], dim=2)
                    v_cat = torch.cat([qkv[k][2] for k in keys], dim=2)
                causal_block = keys.index("text") if (causal and q == "text" and "text" in keys) else None
                masks = [pad.get(k) for k in keys]
                if causal_block is not None and keys == ["text"] and masks[0] is None:
                    h = s.attn.attend(qkv[q][0], k_cat, v_cat, None, is_causal=True)
                else:
                    n_q = x[q].shape[1]
                    mask = key_mask(masks, [x[k].shape[1] for k in keys], causal_block, n_q, x[q].device)
                    h = s.attn.attend(qkv[q][0], k_cat, v_cat, mask)
                out[q] = s.residual(s.ln_attn, x[q], h)
        has_context = "image" in x or (cache is not None and "cross_k" in cache)
        if spec.cross_attention and cross_attention and "text" in out and has_context:
            s = self.stream("text")
            if cache is not None and "cross_k" in cache:  # the image's keys/values: computed once per decode
                kv = (cache["cross_k"], cache["cross_v"])
            else:
                kv = s.cross.project_kv(s.ln_context(x["image"]))
                if cache is not None:
                    cache["cross_k"], cache["cross_v"] = kv
            mask = cross_mask[:, None] if cross_mask is not None else None
            if mask is None and pad.get("image") is not None:
                mask = pad["image"][:, None, None, :]
            out["text"] = out["text"] + _gate(s.cross_gate) * s.cross(s.ln_cross(out["text"]), kv, mask)
        for m in spec.updated:
            if m in out and self.stream(m).mlp is not None:
                s = self.stream(m)
                out[m] = s.residual(s.ln_mlp, out[m], _gate(s.mlp_gate) * s.mlp(s.sublayer_input(s.ln_mlp, out[m])))
        return out

    def _cached_attention(self, q: str, keys: list[str], qkv: dict, causal: bool, pad, cache: dict) -> Tensor:
        if q != "text" or keys != ["text"] or not causal:
            raise ValueError(
                f"KV-cached decoding needs causal text queries that see only text keys; this layer's "
                f"{q} queries see {keys} (causal_text={causal})"
            )
        if pad.get("text") is not None:
            raise ValueError("KV-cached decoding takes unpadded text (group prompts by length)")
        qt, k, v = qkv["text"]
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        n_new, n_all = qt.shape[2], k.shape[2]
        mask = None
        if n_new > 1:  # new token i sits at position n_all - n_new + i and sees keys up to itself
            mask = torch.ones(n_new, n_all, dtype=torch.bool, device=qt.device).tril(n_all - n_new)[None, None]
        return self.stream("text").attn.attend(qt, k, v, mask)


class FusionEncoder(nn.Module):
    def __init__(
        self,
        specs: list[LayerSpec],
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        gelu: str = "exact",
        sizes: Sizes | None = None,
        eps: float = 1e-5,
        post_norm: bool = False,
    ):
        super().__init__()
        self.specs = list(specs)
        self.layers = nn.ModuleList(
            FusionLayer(s, dim, heads, mlp_ratio, dropout, gelu, sizes, eps, post_norm) for s in self.specs
        )

    def forward(
        self,
        x: dict[str, Tensor],
        pad: Mapping[str, Tensor | None] | None = None,
        *,
        causal_text: bool | None = None,
        cross_attention: bool = True,
        cross_mask: Tensor | None = None,
        layers: slice | None = None,
        cache: KVCache | None = None,
    ) -> dict[str, Tensor]:
        """`layers`: run only this slice of the layers. `cache`: incremental decoding (see FusionLayer)."""
        pad = pad or {}
        for i in range(len(self.layers))[layers or slice(None)]:
            x = self.layers[i](
                x,
                pad,
                causal_text=causal_text,
                cross_attention=cross_attention,
                cross_mask=cross_mask,
                cache=None if cache is None else cache.layer(i),
            )
        return x
