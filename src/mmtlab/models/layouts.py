"""The published attention layouts as data: a layout is a list of `LayerSpec`, one per layer.

`LayerSpec` says which token streams each stream attends to in a layer and whether the layer has
its own weights per stream; `fusion.py` builds and runs the layers. The presets below are the
published layouts; to change a model's layout, change its preset (or write a new one) here and
nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

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


# ---------------------------------------------------------------------------------------------

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
    cross-attention to the image tokens in every `cross_every`-th layer (M ~ N/2 by default;
    cross_every=0: none, the paper's ablation control, whose captioning pass is a blind LM).
    The contrastive pass runs the same text layers bidirectionally with cross-attention switched
    off; the generative pass runs them as written here (models/mammut.py)."""
    if cross_every < 0:
        raise ValueError(f"mammut layout needs cross_every >= 0 (0: no cross-attention), got {cross_every}")
    text = [
        LayerSpec(
            attend={TEXT: (TEXT,)},
            causal_text=True,
            cross_attention="plain" if cross_every and i % cross_every == cross_every - 1 else None,
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
