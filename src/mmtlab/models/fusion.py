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

from mmtlab.models.layers import MLP, Attention, CrossAttention, KVCache, key_mask

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
    group           the part of the model the layer belongs to ("vision", "text", "unimodal" ...):
                    decoder families run groups of layers as passes (models/decoder.py).
    """

    attend: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    weights: Weights = "shared"
    causal_text: bool = False
    cross_attention: CrossAttn | None = None
    ffn: bool = True
    frozen: bool = False
    group: str = ""

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

    def __init__(
        self, spec: LayerSpec, dim: int, heads: int, mlp_ratio: float, dropout: float, updates: bool, gelu: str
    ):
        super().__init__()
        self.ln_attn = nn.LayerNorm(dim) if spec.attend else None
        self.attn = Attention(dim, heads, dropout) if spec.attend else None
        has_cross = spec.cross_attention is not None and updates
        self.ln_cross = nn.LayerNorm(dim) if has_cross else None
        self.ln_context = nn.LayerNorm(dim) if has_cross else None
        self.cross = CrossAttention(dim, heads, dropout) if has_cross else None
        has_ffn = spec.ffn and updates
        self.ln_mlp = nn.LayerNorm(dim) if has_ffn else None
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout, gelu) if has_ffn else None
        gated = spec.cross_attention == "gated_tanh" and updates
        self.cross_gate = nn.Parameter(torch.zeros(1)) if gated and has_cross else None
        self.mlp_gate = nn.Parameter(torch.zeros(1)) if gated and has_ffn else None


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
    ):
        super().__init__()
        self.spec = spec
        size = {**dict.fromkeys((*spec.updated, *spec.keyed), (dim, heads, mlp_ratio)), **(sizes or {})}
        if spec.weights == "shared":
            self.streams = nn.ModuleDict({"shared": Stream(spec, dim, heads, mlp_ratio, dropout, True, gelu)})
        else:
            owners = dict.fromkeys((*spec.updated, *spec.keyed))
            self.streams = nn.ModuleDict(
                {m: Stream(spec, size[m][0], size[m][1], size[m][2], dropout, m in spec.updated, gelu) for m in owners}
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
            qkv = {m: self.stream(m).attn.project_qkv(self.stream(m).ln_attn(x[m])) for m in needed}
            for q in queries:
                keys = [k for k in spec.attend[q] if k in x]
                if not keys:
                    continue
                if cache is not None:
                    out[q] = x[q] + self._cached_attention(q, keys, qkv, causal, pad, cache)
                    continue
                if len(keys) == 1:  # no concatenation, no copy
                    k_cat, v_cat = qkv[keys[0]][1], qkv[keys[0]][2]
                else:
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
                out[m] = out[m] + _gate(s.mlp_gate) * s.mlp(s.ln_mlp(out[m]))
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
    ):
        super().__init__()
        self.specs = list(specs)
        self.layers = nn.ModuleList(FusionLayer(s, dim, heads, mlp_ratio, dropout, gelu, sizes) for s in self.specs)

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


# ---------------------------------------------------------------------------------------------
# Presets: the published attention layouts. Each returns the list of LayerSpec for `depth` layers.

TEXT, IMAGE = "text", "image"
BOTH = {TEXT: (TEXT, IMAGE), IMAGE: (IMAGE, TEXT)}
SELF = {TEXT: (TEXT,), IMAGE: (IMAGE,)}


def merged(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Single-stream (UNITER, VisualBERT, VL-BERT): every token attends to every token."""
    return [LayerSpec(attend=BOTH, weights=weights) for _ in range(depth)]


def modality_specific(
    depth: int,
    weights: Weights = "per_modality",
    streams: tuple[str, ...] = (TEXT, IMAGE),
    image_depth: int | None = None,
) -> list[LayerSpec]:
    """Dual encoder: each stream attends only to itself; no path between modalities.

    `streams` names the streams that get weights: ("image",) is a single-modality ViT, as data2vec
    trains it; ("speech",) a speech transformer. `image_depth`: the image tower's own depth (CLIP
    ViT-L/14: 24 layers, text 12); layer i holds the streams whose towers are deeper than i.
    """
    if image_depth is None or IMAGE not in streams:
        attend = {m: (m,) for m in streams}
        return [LayerSpec(attend=attend, weights=weights) for _ in range(depth)]
    n = {m: image_depth if m == IMAGE else depth for m in streams}
    return [LayerSpec(attend={m: (m,) for m in streams if i < n[m]}, weights=weights) for i in range(max(n.values()))]


def asym_text_queries(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Text queries see text and image; image queries see only image (Hendricks et al. 2021)."""
    return [LayerSpec(attend={TEXT: (TEXT, IMAGE), IMAGE: (IMAGE,)}, weights=weights) for _ in range(depth)]


def asym_image_queries(depth: int, weights: Weights = "shared") -> list[LayerSpec]:
    """Image queries see image and text; text queries see only text."""
    return [LayerSpec(attend={TEXT: (TEXT,), IMAGE: (IMAGE, TEXT)}, weights=weights) for _ in range(depth)]


def coattention(
    depth: int, text_layers: int = 0, image_layers: int = 0, weights: Weights = "per_modality"
) -> list[LayerSpec]:
    """ViLBERT: single-stream layers first (ViLBERT-base has 6 text-only BERT layers before the
    first co-attention and none on the image side), then `depth` co-attention blocks. A block is a
    co-attention transformer layer (Co-TRM: each stream's queries attend only to the other
    stream's keys/values, then that stream's FFN) followed by a standard self-attention + FFN layer
    (TRM) per stream. Each stream has its own weights."""
    cross = {TEXT: (IMAGE,), IMAGE: (TEXT,)}
    layers = [LayerSpec(attend={TEXT: (TEXT,)}, weights=weights) for _ in range(text_layers)]
    layers += [LayerSpec(attend={IMAGE: (IMAGE,)}, weights=weights) for _ in range(image_layers)]
    for _ in range(depth):
        layers += [LayerSpec(attend=cross, weights=weights), LayerSpec(attend=SELF, weights=weights)]
    return layers


def lxmert(
    depth: int = 0, text_layers: int = 3, image_layers: int = 2, cross_layers: int | None = None
) -> list[LayerSpec]:
    """LXMERT: language layers, object-relationship layers, then cross-modality layers (LXMERT-base:
    9, 5, 5). A cross-modality layer is cross-attention whose weights both directions share, then
    per-stream self-attention, then per-stream FFN. `cross_layers` defaults to `depth`."""
    layers = [LayerSpec(attend={TEXT: (TEXT,)}) for _ in range(text_layers)]
    layers += [LayerSpec(attend={IMAGE: (IMAGE,)}) for _ in range(image_layers)]
    for _ in range(depth if cross_layers is None else cross_layers):
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


def vision_tower(depth: int) -> list[LayerSpec]:
    """ViT layers: image tokens attend to image tokens (the image encoder of decoder families)."""
    return [LayerSpec(attend={IMAGE: (IMAGE,)}, group="vision") for _ in range(depth)]


def mammut(depth: int, vision_depth: int = 4, cross_every: int = 2) -> list[LayerSpec]:
    """MaMMUT (Kuo et al. 2023): a ViT, then ONE text decoder of `depth` causal layers with
    cross-attention to the image tokens in every `cross_every`-th layer (M ~ N/2 by default).
    The contrastive pass runs the same text layers bidirectionally with cross-attention switched
    off; the generative pass runs them as written here (models/mammut.py)."""
    if cross_every < 1:
        raise ValueError(f"mammut layout needs cross_every >= 1, got {cross_every}")
    text = [
        LayerSpec(
            attend={TEXT: (TEXT,)},
            causal_text=True,
            cross_attention="plain" if i % cross_every == cross_every - 1 else None,
            group="text",
        )
        for i in range(depth)
    ]
    return vision_tower(vision_depth) + text


def coca(depth: int, vision_depth: int = 4, unimodal: int | None = None) -> list[LayerSpec]:
    """CoCa (Yu et al. 2022): a ViT, `unimodal` causal text-only layers (the contrastive text
    encoder), then depth - unimodal multimodal layers with cross-attention to the image in every
    layer (the captioner, continuing from the unimodal states)."""
    unimodal = depth // 2 if unimodal is None else unimodal
    if not 0 < unimodal < depth:
        raise ValueError(f"coca layout needs 0 < unimodal < depth, got unimodal={unimodal}, depth={depth}")
    uni = [LayerSpec(attend={TEXT: (TEXT,)}, causal_text=True, group="unimodal") for _ in range(unimodal)]
    multi = [
        LayerSpec(attend={TEXT: (TEXT,)}, causal_text=True, cross_attention="plain", group="multimodal")
        for _ in range(depth - unimodal)
    ]
    return vision_tower(vision_depth) + uni + multi


def dual_captioner(
    depth: int, vision_depth: int = 4, encoder: int | None = None, cross_every: int = 1
) -> list[LayerSpec]:
    """A CLIP dual encoder plus a separate captioning decoder: `encoder` bidirectional text layers
    for the contrastive loss, then depth - encoder causal decoder layers (cross-attention in every
    `cross_every`-th) that caption from the token embeddings. Only the ViT and the token
    embeddings are shared: the baseline that MaMMUT and CoCa fold into one text tower."""
    encoder = depth // 2 if encoder is None else encoder
    if not 0 < encoder < depth or cross_every < 1:
        raise ValueError(f"dual_captioner needs 0 < encoder < depth and cross_every >= 1, got {encoder}, {cross_every}")
    enc = [LayerSpec(attend={TEXT: (TEXT,)}, group="text_encoder") for _ in range(encoder)]
    dec = [
        LayerSpec(
            attend={TEXT: (TEXT,)},
            causal_text=True,
            cross_attention="plain" if i % cross_every == cross_every - 1 else None,
            group="decoder",
        )
        for i in range(depth - encoder)
    ]
    return vision_tower(vision_depth) + enc + dec


def lm(depth: int) -> list[LayerSpec]:
    """A GPT-style causal language model: causal text self-attention and an FFN per layer."""
    return [LayerSpec(attend={TEXT: (TEXT,)}, causal_text=True, group="lm") for _ in range(depth)]


def flamingo(depth: int, cross_every: int = 1) -> list[LayerSpec]:
    """Flamingo (Alayrac et al. 2022): the `depth` layers of a frozen causal LM (`lm` above), with a
    GATED XATTN-DENSE block before every `cross_every`-th one. A gated block has no self-attention:
    text queries cross-attend to the resampled media tokens (the "image" stream; which image each
    token may see is the cross-attention mask, models/flamingo.py), then an FFN; both residuals
    are scaled by tanh(gate) with gates at 0, so at initialisation the model is the frozen LM."""
    if cross_every < 1:
        raise ValueError(f"flamingo layout needs cross_every >= 1, got {cross_every}")
    layers = []
    for i in range(depth):
        if i % cross_every == 0:
            layers.append(LayerSpec(attend={}, cross_attention="gated_tanh", group="gated"))
        layers.append(LayerSpec(attend={TEXT: (TEXT,)}, causal_text=True, frozen=True, group="lm"))
    return layers


PRESETS: dict[str, Callable[..., list[LayerSpec]]] = {
    "merged": merged,
    "modality_specific": modality_specific,
    "asym_text_queries": asym_text_queries,
    "asym_image_queries": asym_image_queries,
    "coattention": coattention,
    "lxmert": lxmert,
    "mixed": mixed,
    "mammut": mammut,
    "coca": coca,
    "dual_captioner": dual_captioner,
    "lm": lm,
    "flamingo": flamingo,
}


def unimodal_prefix(specs: list[LayerSpec]) -> int:
    """Number of leading layers in which no stream reads another one. Their output for an image
    (or a caption) does not depend on what it is paired with, so cross-encoder retrieval runs them
    once per image and once per caption: all layers of a dual encoder, the first k of mixed(k),
    the single-stream layers of co-attention and LXMERT, none of a merged model."""
    for i, s in enumerate(specs):
        if s.cross_attention or any(k != q for q, keys in s.attend.items() for k in keys):
            return i
    return len(specs)


def build_layout(name: str, depth: int, **kwargs) -> list[LayerSpec]:
    if name not in PRESETS:
        raise ValueError(f"unknown layout {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name](depth, **kwargs)
