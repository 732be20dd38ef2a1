"""Hugging Face `BertModel`, `ViTModel` and `ViltModel` directories as our encoder, without `transformers`.

Each is one of our configs (tests/test_hf_encoders.py checks hidden states and pooled outputs
against transformers' own models):

- BERT: post-LN blocks (`model.post_norm`: the LayerNorm after each residual sum, no final one),
  LayerNorm eps 1e-12 (`model.norm_eps`) and a LayerNorm on the token + position embeddings
  (`model.text.embed_norm`). Its layers become the text stream's weights in the layout asked for:
  merged by default, the single-stream start of Hendricks et al. 2021 (every layer's shared
  weights are BERT's layer), or a dual encoder's text tower (modality_specific).
- ViT: pre-LN blocks with eps 1e-12 and a final LayerNorm; its layers become the image stream's
  (modality_specific by default: the image tower of a dual encoder).
- ViLT (Kim et al. 2021): BERT's text embeddings, ViT's patches and pre-LN blocks, one stream:
  the merged layout with shared weights; its one final LayerNorm is both streams' `norm`.

Tensors are renamed and folded, exactly or up to float rounding:
- query/key/value are concatenated into our packed `attn.qkv` (a zero bias where `qkv_bias` is off);
- the token-type embedding of segment 0, the only segment a single caption has, is added to the
  position table; ViLT's modality-type embeddings are added to the text embedding LayerNorm's
  bias (they come after it) and to the image's class token and position grid;
- the class token's position is added to the class token; the other positions are our grid;
- the processor's pixel mean / std (ViT's and ViLT's default 0.5 / 0.5 is our [-1, 1] already) is
  folded into the patch convolution, as for CLIP (models/hf_clip.py);
- the pooler (dense + tanh on the first token) is the ITM head's pooler of that stream
  (`itm.text_pool` for BERT and ViLT, `itm.image_pool` for ViT); the ITM classifier starts random;
- the masked-LM head of a BertForMaskedLM / BertForPreTraining / ViltForMaskedLM checkpoint
  (dense, GELU, LayerNorm, a decoder tied to the word embeddings, a bias) is our MLM head; a
  BertModel or ViltModel has none, and ours then starts random.

ViLT samples patches when an image has more than `max_image_length` of them, and interpolates its
position grid (bilinearly) to images of other sizes: the import takes configs that never sample
(max_image_length -1 or at least the grid), and our model reads images of the config's size
(resampling the grid bicubically otherwise, which is not ViLT's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mmtlab.config import ModelConfig
from mmtlab.models.hf_clip import (
    ACT_TO_GELU,
    HFError,
    fold_pixel_stats,
    pixel_stats,
    read_model_config,
    read_safetensors,
)
from mmtlab.models.layouts import LayerSpec

_PRE_LN = {  # ViT / ViLT module (after encoder.layer.N.) -> ours (after streams.<stream>.)
    "layernorm_before": "ln_attn",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "ln_mlp",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_POST_LN = {  # BERT's
    "attention.output.dense": "attn.proj",
    "attention.output.LayerNorm": "ln_attn",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "output.LayerNorm": "ln_mlp",
}
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # ViTImageProcessor's and ViltImageProcessor's mean / std


@dataclass(frozen=True)
class Format:
    name: str  # the CLI's: hf-bert
    model_type: str  # config.json's
    stream: str  # the stream its layers become (ViLT: both, with shared weights)
    qkv: str  # the query/key/value modules' prefix in a layer
    layer: dict[str, str]
    layouts: tuple[str, ...]  # the layouts it can be imported as; the first is the default


FORMATS = {
    "hf-bert": Format(
        "hf-bert",
        "bert",
        "text",
        "attention.self.",
        _POST_LN,
        ("merged", "modality_specific", "asym_text_queries", "asym_image_queries"),
    ),
    "hf-vit": Format(
        "hf-vit",
        "vit",
        "image",
        "attention.attention.",
        _PRE_LN,
        ("modality_specific", "merged", "asym_text_queries", "asym_image_queries"),
    ),
    "hf-vilt": Format("hf-vilt", "vilt", "text", "attention.attention.", _PRE_LN, ("merged",)),
}


def read_config(path: Path, fmt: Format) -> dict:
    """config.json of a `fmt` model directory, or a one-line error."""
    return read_model_config(path, fmt.name, fmt.model_type)


def model_fields(path: str | Path, fmt: Format, layout: str | None = None) -> dict:
    """The ModelConfig (as a dict) of the model at `path` with its layers in `layout` (the
    format's default if None); a HFError naming what our encoder cannot represent."""
    path = Path(path)
    c = read_config(path, fmt)
    layout = layout or fmt.layouts[0]
    if layout not in fmt.layouts:
        raise HFError(f"{fmt.name}: layout {layout!r} (supported: {', '.join(fmt.layouts)})")
    try:
        return _fields(c, fmt, layout)
    except (TypeError, AttributeError, ZeroDivisionError) as e:
        raise HFError(f"{fmt.name}: {path / 'config.json'} has values of unexpected types ({e})") from None


def _fields(c: dict, fmt: Format, layout: str) -> dict:
    act = c.get("hidden_act", "gelu")
    if act not in ACT_TO_GELU:
        raise HFError(f"{fmt.name}: hidden_act {act!r} (supported: {', '.join(ACT_TO_GELU)})")
    if c.get("position_embedding_type", "absolute") != "absolute":
        raise HFError(f"{fmt.name}: position_embedding_type {c['position_embedding_type']!r} (only absolute)")
    width, hidden = c.get("hidden_size", 768), c.get("intermediate_size", 3072)
    if (c.get("pooler_act") or "tanh") != "tanh" or (c.get("pooler_output_size") or width) != width:
        raise HFError(f"{fmt.name}: a pooler other than dense + tanh at the model's width (ITM's pooler is one)")
    if int(width * (hidden / width)) != hidden:
        raise HFError(f"{fmt.name}: intermediate_size {hidden} is not representable as a ratio of width {width}")
    fields: dict = {
        "arch": "encoder",
        "layout": layout,
        "width": width,
        "depth": c.get("num_hidden_layers", 12),
        "heads": c.get("num_attention_heads", 12),
        "mlp_ratio": hidden / width,
        "gelu": ACT_TO_GELU[act],
        "norm_eps": c.get("layer_norm_eps", 1e-12),
        "pool": "cls",
        "text": {},
    }
    if fmt.model_type != "vit":
        fields["text"].update(
            max_len=c.get("max_position_embeddings", 512), vocab_size=c.get("vocab_size", 30522), embed_norm=True
        )
    if fmt.model_type == "bert":
        fields["post_norm"] = True
        return fields
    if c.get("num_channels", 3) != 3:
        raise HFError(f"{fmt.name}: {c['num_channels']} image channels (only RGB is supported)")
    size, patch = c.get("image_size", 384 if fmt.model_type == "vilt" else 224), c.get("patch_size", 32)
    if not isinstance(size, int) or not isinstance(patch, int):
        raise HFError(f"{fmt.name}: image_size {size} / patch_size {patch}: only square images are supported")
    longest = c.get("max_image_length", -1)
    if fmt.model_type == "vilt" and 0 <= longest < (size // patch) ** 2:
        raise HFError(
            f"{fmt.name}: max_image_length {longest} samples patches of a {size}px image "
            f"({(size // patch) ** 2} patches); our model reads them all (set it to -1)"
        )
    fields["image"] = {"size": size, "patch": patch}
    return fields


_MLM_HEADS = ("cls.predictions.", "mlm_score.")  # BertFor{MaskedLM,PreTraining}'s, ViltForMaskedLM's


def _base_model(raw: dict[str, Tensor], fmt: Format) -> dict[str, Tensor]:
    """The base model's tensors of a task model's checkpoint (BertForMaskedLM's under "bert."),
    with its masked-LM head's under "mlm_head." (BERT's cls.predictions, ViLT's mlm_score)."""
    prefix = fmt.model_type + "."
    head = {"mlm_head." + k[len(h) :]: v for k, v in raw.items() for h in _MLM_HEADS if k.startswith(h)}
    if "embeddings.position_embeddings" in raw or "embeddings.position_embeddings.weight" in raw:
        return raw
    return {**{k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}, **head}


def weights(path: str | Path, fmt: Format, cfg: ModelConfig, layout: list[LayerSpec]) -> dict[str, Tensor]:
    """The model's tensors under MultimodalTransformer's names, for `cfg` built as `layout`: the
    tensors it fills (the rest of the model keeps its initialisation)."""
    path = Path(path)
    raw = _base_model({k: v.float() for k, v in read_safetensors(path, fmt.name).items()}, fmt)
    try:
        return _weights(raw, path, fmt, cfg, layout)
    except KeyError as e:
        raise HFError(f"{fmt.name}: {path} lacks tensor {e.args[0]!r}") from None


def _weights(raw: dict, path: Path, fmt: Format, cfg: ModelConfig, layout: list[LayerSpec]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for i, spec in enumerate(layout):
        if fmt.stream not in spec.attend.get(fmt.stream, ()):
            raise HFError(f"{fmt.name}: layer {i} of layout {cfg.layout} has no {fmt.stream} self-attention")
        owner = "shared" if spec.weights == "shared" else fmt.stream
        src, dst = f"encoder.layer.{i}.", f"encoder.layers.{i}.streams.{owner}."
        qkv = [raw[f"{src}{fmt.qkv}{p}.weight"] for p in ("query", "key", "value")]
        out[f"{dst}attn.qkv.weight"] = torch.cat(qkv, 0)
        biases = [raw.get(f"{src}{fmt.qkv}{p}.bias") for p in ("query", "key", "value")]
        out[f"{dst}attn.qkv.bias"] = torch.cat([qkv[0].new_zeros(len(qkv[0])) if b is None else b for b in biases])
        for a, b in fmt.layer.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{b}.{kind}"] = raw[f"{src}{a}.{kind}"]
    if f"encoder.layer.{len(layout)}.output.dense.weight" in raw:
        raise HFError(f"{fmt.name}: {path} has more than the {len(layout)} layers of its config.json")
    pooled = "image" if fmt.model_type == "vit" else "text"
    if "pooler.dense.weight" in raw:  # BertModel(add_pooling_layer=False) saves none
        out[f"itm.{pooled}_pool.weight"], out[f"itm.{pooled}_pool.bias"] = (
            raw["pooler.dense.weight"],
            raw["pooler.dense.bias"],
        )
    out.update(_mlm_head(raw, fmt, cfg))
    if fmt.model_type == "bert":
        out.update(_text(raw, "embeddings."))
        return out
    modality = raw["embeddings.token_type_embeddings.weight"] if fmt.model_type == "vilt" else None
    out.update(_image(raw, path, fmt, cfg, None if modality is None else modality[1]))
    for m in ("text", "image") if fmt.model_type == "vilt" else ("image",):
        out[f"norm.{m}.weight"], out[f"norm.{m}.bias"] = raw["layernorm.weight"], raw["layernorm.bias"]
    if modality is not None:
        out.update(_text(raw, "embeddings.text_embeddings."))
        out["text_embed.norm.bias"] = out["text_embed.norm.bias"] + modality[0]
    return out


def _mlm_head(raw: dict[str, Tensor], fmt: Format, cfg: ModelConfig) -> dict[str, Tensor]:
    """The masked-LM head's tensors, if the checkpoint has one our MLM head computes: exact GELU
    and a decoder tied to the word embeddings (transformers saves a tied one only as the bias)."""
    if "mlm_head.transform.dense.weight" not in raw or cfg.gelu != "exact":
        return {}
    words = raw["embeddings.text_embeddings.word_embeddings.weight" if fmt.model_type == "vilt" else
                "embeddings.word_embeddings.weight"]  # fmt: skip
    decoder = raw.get("mlm_head.decoder.weight")
    if decoder is not None and not torch.equal(decoder, words):
        raise HFError(f"{fmt.name}: the masked-LM decoder is not tied to the word embeddings (ours is)")
    return {
        "mlm.dense.weight": raw["mlm_head.transform.dense.weight"],
        "mlm.dense.bias": raw["mlm_head.transform.dense.bias"],
        "mlm.norm.weight": raw["mlm_head.transform.LayerNorm.weight"],
        "mlm.norm.bias": raw["mlm_head.transform.LayerNorm.bias"],
        "mlm.bias": raw["mlm_head.bias"] if "mlm_head.bias" in raw else raw["mlm_head.decoder.bias"],
    }


def _text(raw: dict[str, Tensor], e: str) -> dict[str, Tensor]:
    """BERT's embeddings: words, positions plus segment 0's type embedding, then a LayerNorm."""
    return {
        "text_embed.tok.weight": raw[f"{e}word_embeddings.weight"],
        "text_embed.pos": raw[f"{e}position_embeddings.weight"] + raw[f"{e}token_type_embeddings.weight"][0],
        "text_embed.norm.weight": raw[f"{e}LayerNorm.weight"],
        "text_embed.norm.bias": raw[f"{e}LayerNorm.bias"],
    }


def _image(raw: dict[str, Tensor], path: Path, fmt: Format, cfg: ModelConfig, modality: Tensor | None) -> dict:
    """ViT's patch embedding: class token and position grid (plus ViLT's image type), folded conv."""
    d, g = cfg.width, cfg.image.size // cfg.image.patch
    pos = raw["embeddings.position_embeddings"].reshape(-1, d)
    if len(pos) != g * g + 1:
        raise HFError(f"{fmt.name}: {len(pos)} positions in {path}, not the {g * g + 1} of a {g}x{g} grid")
    extra = torch.zeros(d) if modality is None else modality
    w, bias = fold_pixel_stats(raw["embeddings.patch_embeddings.projection.weight"], *pixel_stats(path, fmt.name, HALF))
    return {
        "image_embed.cls": (raw["embeddings.cls_token"].reshape(d) + pos[0] + extra).reshape(1, 1, d),
        "image_embed.pos": (pos[1:] + extra).T.reshape(d, g, g).contiguous(),
        "image_embed.proj.weight": w,
        "image_embed.proj.bias": raw["embeddings.patch_embeddings.projection.bias"] + bias,
    }
