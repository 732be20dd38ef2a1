"""The fusion encoder: one transformer layer type, many attention layouts, described by data.

A model's attention layout is a list of `LayerSpec`. Each layer holds a dict of token streams
(`{"text": [B, Lt, D], "image": [B, Li, D]}`); `attend` says which streams a query stream sees
as keys. Streams a layer does not name pass through it unchanged, and a stream missing from the
input (a text-only forward) is simply skipped, so `encode_text` of a dual encoder runs the same
layers as the joint forward. The presets at the bottom are the published layouts; to change a
model's layout, change its preset (or write a new one) here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from mmtlab.models.layers import MLP, Attention, CrossAttention, key_mask

Weights = Literal["shared", "per_modality"]
CrossAttn = Literal["plain", "gated_tanh"]


@dataclass(frozen=True)
class LayerSpec:
    """One layer: an attention sub-layer, an optional cross-attention sub-layer, then an FFN.

    attend          query stream -> key streams it attends to, in one softmax over their
                    concatenation. Empty: no self-attention sub-layer (Flamingo's gated layers).
    weights         "shared": one set of Q/K/V/O/FFN/norm weights for all streams (single-stream
                    BERTs); "per_modality": one set per stream, and each stream's keys and values
                    are projected with its own weights (ViLBERT, dual encoders).
    causal_text     text queries see only earlier text keys (other streams stay fully visible).
    cross_attention text queries attend to the image stream in an extra sub-layer with its own
                    weights (decoders). "gated_tanh" scales that sub-layer's and the FFN's residual
                    by tanh(gate), gates starting at 0, so the layer is the identity at init.
    ffn             whether the layer ends with an MLP on the streams it updated.
    frozen          parameters are not trained (gradients still flow through to the inputs).
    """

    attend: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weights: Weights = "shared"
    causal_text: bool = False
    cross_attention: CrossAttn | None = None
    ffn: bool = True
    frozen: bool = False

    def __post_init__(self):
        if self.weights not in ("shared", "per_modality"):
            raise ValueError(f"LayerSpec.weights must be 'shared' or 'per_modality', got {self.weights!r}")
        if self.cross_attention not in (None, "plain", "gated_tanh"):
            raise ValueError(
                f"LayerSpec.cross_attention must be None, 'plain' or 'gated_tanh', got {self.cross_attention!r}"
            )
        object.__setattr__(self, "attend", {q: tuple(ks) for q, ks in self.attend.items()})

    @property
    def updated(self) -> tuple[str, ...]:
        """Streams whose state this layer changes."""
        extra = ("text",) if self.cross_attention and "text" not in self.attend else ()
        return tuple(self.attend) + extra

    @property
    def keyed(self) -> tuple[str, ...]:
        """Streams whose keys/values the self-attention sub-layer reads."""
        return tuple(dict.fromkeys(k for ks in self.attend.values() for k in ks))


class Stream(nn.Module):
    """One set of sub-layer weights (pre-LN): used by one stream, or shared by all."""

    def __init__(self, spec: LayerSpec, dim: int, heads: int, mlp_ratio: float, dropout: float, updates: bool):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim) if spec.attend else None
        self.attn = Attention(dim, heads, dropout) if spec.attend else None
        has_cross = spec.cross_attention is not None and updates
        self.ln_cross = nn.LayerNorm(dim) if has_cross else None
        self.ln_context = nn.LayerNorm(dim) if has_cross else None
        self.cross = CrossAttention(dim, heads, dropout) if has_cross else None
        has_ffn = spec.ffn and updates
        self.ln_mlp = nn.LayerNorm(dim) if has_ffn else None
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout) if has_ffn else None
        gated = spec.cross_attention == "gated_tanh" and updates
        self.cross_gate = nn.Parameter(torch.zeros(1)) if gated and has_cross else None
        self.mlp_gate = nn.Parameter(torch.zeros(1)) if gated and has_ffn else None


def _gate(g: nn.Parameter | None) -> Tensor | float:
    return 1.0 if g is None else torch.tanh(g)


class FusionLayer(nn.Module):
    def __init__(self, spec: LayerSpec, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        if spec.weights == "shared":
            self.streams = nn.ModuleDict({"shared": Stream(spec, dim, heads, mlp_ratio, dropout, True)})
        else:
            owners = dict.fromkeys((*spec.updated, *spec.keyed))
            self.streams = nn.ModuleDict(
                {m: Stream(spec, dim, heads, mlp_ratio, dropout, m in spec.updated) for m in owners}
            )
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
    ) -> dict[str, Tensor]:
        spec = self.spec
        causal = spec.causal_text if causal_text is None else causal_text
        out = dict(x)
        queries = [q for q in spec.attend if q in x]
        if queries:
            needed = dict.fromkeys(queries + [k for q in queries for k in spec.attend[q] if k in x])
            qkv = {m: self.stream(m).attn.project_qkv(self.stream(m).ln_attn(x[m])) for m in needed}
            for q in queries:
                keys = [k for k in spec.attend[q] if k in x]
                if not keys:
                    continue
                k_cat = torch.cat([qkv[k][1] for k in keys], dim=2)
                v_cat = torch.cat([qkv[k][2] for k in keys], dim=2)
                causal_block = keys.index("text") if (causal and q == "text" and "text" in keys) else None
                masks = [pad.get(k) for k in keys]
                if causal_block is not None and keys == ["text"] and masks[0] is None:
                    h = self.stream(q).attn.attend(qkv[q][0], k_cat, v_cat, None, is_causal=True)
                else:
                    n_q = x[q].shape[1]
                    mask = key_mask(masks, [x[k].shape[1] for k in keys], causal_block, n_q, x[q].device)
                    h = self.stream(q).attn.attend(qkv[q][0], k_cat, v_cat, mask)
                out[q] = x[q] + h
        if spec.cross_attention and cross_attention and "text" in out and "image" in x:
            s = self.stream("text")
            kv = s.cross.project_kv(s.ln_context(x["image"]))
            mask = cross_mask[:, None] if cross_mask is not None else None
            if mask is None and pad.get("image") is not None:
                mask = pad["image"][:, None, None, :]
            out["text"] = out["text"] + _gate(s.cross_gate) * s.cross(s.ln_cross(out["text"]), kv, mask)
        for m in spec.updated:
            if m in out and self.stream(m).mlp is not None:
                s = self.stream(m)
                out[m] = out[m] + _gate(s.mlp_gate) * s.mlp(s.ln_mlp(out[m]))
        return out


class FusionEncoder(nn.Module):
    def __init__(self, specs: list[LayerSpec], dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.specs = list(specs)
        self.layers = nn.ModuleList(FusionLayer(s, dim, heads, mlp_ratio, dropout) for s in self.specs)

    def forward(
        self,
        x: dict[str, Tensor],
        pad: Mapping[str, Tensor | None] | None = None,
        *,
        causal_text: bool | None = None,
        cross_attention: bool = True,
        cross_mask: Tensor | None = None,
        layers: slice | None = None,
    ) -> dict[str, Tensor]:
        pad = pad or {}
        for layer in self.layers[layers or slice(None)]:
            x = layer(x, pad, causal_text=causal_text, cross_attention=cross_attention, cross_mask=cross_mask)
        return x


# ---------------------------------------------------------------------------------------------
# Presets: the published attention layouts. Each returns the list of LayerSpec for `depth` layers.

TEXT, IMAGE = "text", "image"
BOTH = {TEXT: (TEXT, IMAGE), IMAGE: (IMAGE, TEXT)}
SELF = {TEXT: (TEXT,), IMAGE: (IMAGE,)}


def merged(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Single-stream (UNITER, VisualBERT, VL-BERT): every token attends to every token."""
    return [LayerSpec(attend=BOTH, weights=weights) for _ in range(depth)]


def modality_specific(
    depth: int, weights: Weights = "per_modality", streams: tuple[str, ...] = (TEXT, IMAGE)
) -> list[LayerSpec]:
    """Dual encoder: each stream attends only to itself; no path between modalities.

    `streams` names the streams that get weights: ("image",) is a single-modality ViT, as data2vec
    trains it; ("speech",) a speech transformer.
    """
    attend = {m: (m,) for m in streams}
    return [LayerSpec(attend=attend, weights=weights) for _ in range(depth)]


def asym_text_queries(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Text queries see text and image; image queries see only image (Hendricks et al. 2021)."""
    return [LayerSpec(attend={TEXT: (TEXT, IMAGE), IMAGE: (IMAGE,)}, weights=weights) for _ in range(depth)]


def asym_image_queries(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Image queries see image and text; text queries see only text."""
    return [LayerSpec(attend={TEXT: (TEXT,), IMAGE: (IMAGE, TEXT)}, weights=weights) for _ in range(depth)]


def coattention(depth: int, weights: Weights = "per_modality") -> list[LayerSpec]:
    """ViLBERT co-attention: each stream's queries attend to the other stream only, then
    a self-attention + FFN per stream."""
    cross = {TEXT: (IMAGE,), IMAGE: (TEXT,)}
    layers = []
    for _ in range(depth):
        layers += [LayerSpec(attend=cross, weights=weights, ffn=False), LayerSpec(attend=SELF, weights=weights)]
    return layers


def lxmert(depth: int = 0, text_layers: int = 3, image_layers: int = 2, cross_layers: int = 2) -> list[LayerSpec]:
    """LXMERT: language layers, object-relationship layers, then cross-modality layers
    (co-attention with weights shared by both directions, then per-stream self-attention + FFN)."""
    del depth  # LXMERT is sized by its three layer counts
    layers = [LayerSpec(attend={TEXT: (TEXT,)}) for _ in range(text_layers)]
    layers += [LayerSpec(attend={IMAGE: (IMAGE,)}) for _ in range(image_layers)]
    for _ in range(cross_layers):
        layers += [
            LayerSpec(attend={TEXT: (IMAGE,), IMAGE: (TEXT,)}, weights="shared", ffn=False),
            LayerSpec(attend=SELF, weights="per_modality"),
        ]
    return layers


def mixed(depth: int, k: int = 2, weights: Weights = "shared") -> list[LayerSpec]:
    """k modality-specific layers, then depth - k merged layers (Hendricks et al. 2021)."""
    if not 0 <= k <= depth:
        raise ValueError(f"mixed layout needs 0 <= k <= depth, got k={k}, depth={depth}")
    return modality_specific(k) + merged(depth - k, weights=weights)


PRESETS: dict[str, Callable[..., list[LayerSpec]]] = {
    "merged": merged,
    "modality_specific": modality_specific,
    "asym_text_queries": asym_text_queries,
    "asym_image_queries": asym_image_queries,
    "coattention": coattention,
    "lxmert": lxmert,
    "mixed": mixed,
}


def build_layout(name: str, depth: int, **kwargs) -> list[LayerSpec]:
    if name not in PRESETS:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](depth, **kwargs)
