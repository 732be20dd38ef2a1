"""Hugging Face `CLIPModel` directories in and out of our dual encoder, without `transformers`.

CLIP is one of our configs: layout modality_specific (per-stream weights), pre-LN blocks, a
causal text tower pooled at its end token (`model.text.causal`, `model.text.pool: last`), a
LayerNorm on the ViT's input tokens (`model.image.pre_norm`), class-token pooling, final
LayerNorms, bias-free projections and a learned logit scale (tests/test_hf_clip.py checks
embeddings and logits against transformers' CLIPModel). Tensors are renamed and reshaped:

- q/k/v projections are concatenated into our packed `attn.qkv`;
- CLIP adds position 0 of its position table to the class embedding: that sum is our `cls`;
  the other positions are our [D, G, G] grid;
- CLIP's patch convolution has no bias and reads pixels normalised with the processor's
  mean/std; ours reads [-1, 1] pixels. The normalisation is folded into our convolution on
  import (exact: the convolution is linear), and on export the processor is written with mean
  = std = 0.5, which is our [-1, 1], while our convolution's bias moves into the position table.

Only safetensors are read; pytorch_model.bin is refused (loading it unpickles the file).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from mmtlab.config import ModelConfig
from mmtlab.rundir import RunFileError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIPImageProcessor's defaults
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACT_TO_GELU = {"quick_gelu": "quick", "gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
GELU_TO_ACT = {"quick": "quick_gelu", "exact": "gelu", "tanh": "gelu_pytorch_tanh"}
_LAYER = {  # CLIP module (after encoder.layers.N.) -> ours (after streams.<text|image>.)
    "layer_norm1": "ln_attn",
    "self_attn.out_proj": "attn.proj",
    "layer_norm2": "ln_mlp",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_TOWERS = {"text": "text_model", "image": "vision_model"}
# model.image.width / mlp_ratio / heads, model.layout_args.image_depth
_OWN_SIZE = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
_DEFAULTS = {  # CLIPTextConfig's and CLIPVisionConfig's, for keys a config.json leaves out
    "hidden_size": (512, 768),
    "intermediate_size": (2048, 3072),
    "num_attention_heads": (8, 12),
    "num_hidden_layers": (12, 12),
    "hidden_act": ("quick_gelu", "quick_gelu"),
    "layer_norm_eps": (1e-5, 1e-5),
}


class HFError(RunFileError):
    """A Hugging Face directory that cannot be read or written as CLIP: one line naming why."""


def read_model_config(path: Path, name: str, model_type: str, hint: str = "") -> dict:
    """config.json of a Hugging Face model directory whose model_type must be `model_type`, or a
    one-line error that starts with the import's `name` (hf-clip, hf-bert, ...)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: {path} is not a directory")
    f = path / "config.json"
    if not f.exists():
        raise FileNotFoundError(f"{name}: {path} is not a Hugging Face model directory (no config.json)")
    try:
        c = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{name}: {f} is not valid JSON ({e})") from None
    kind = c.get("model_type") if isinstance(c, dict) else None
    if kind != model_type:
        raise HFError(f"{name}: {f} describes a {kind!r} model, not {model_type!r}{hint}")
    return c


def _config(path: Path) -> dict:
    return read_model_config(path, "hf-clip", "clip", " (a CLIPModel's save_pretrained)")


def model_fields(path: str | Path) -> dict:
    """The ModelConfig (as a dict) of the CLIPModel at `path`; a HFError naming what our dual
    encoder cannot represent (another activation or LayerNorm eps in one tower). A vision tower
    wider or deeper than the text tower (published CLIPs: 768 vs 512 wide) is `model.image.width`
    and `model.layout_args.image_depth`."""
    path = Path(path)
    c = _config(path)
    try:
        return _fields(c)
    except (TypeError, AttributeError, ZeroDivisionError) as e:
        raise HFError(f"hf-clip: {path / 'config.json'} has values of unexpected types ({e})") from None


def _fields(c: dict) -> dict:
    t, v = c.get("text_config") or {}, c.get("vision_config") or {}
    dims, vision = {}, {}
    for key, (default_t, default_v) in _DEFAULTS.items():
        a, b = t.get(key, default_t), v.get(key, default_v)
        if a != b and key not in _OWN_SIZE:
            raise HFError(
                f"hf-clip: text and vision towers differ in {key} ({a} vs {b}); mmtlab's dual encoder has one "
                "activation and LayerNorm eps for both"
            )
        dims[key], vision[key] = a, b
    if dims["hidden_act"] not in ACT_TO_GELU:
        raise HFError(f"hf-clip: hidden_act {dims['hidden_act']!r} (supported: {', '.join(ACT_TO_GELU)})")
    if abs(dims["layer_norm_eps"] - 1e-5) > 1e-12:
        raise HFError(f"hf-clip: layer_norm_eps {dims['layer_norm_eps']} (only 1e-5 is supported)")
    if v.get("num_channels", 3) != 3:
        raise HFError(f"hf-clip: {v['num_channels']} image channels (only RGB is supported)")
    ratio, image_ratio = _ratio(dims), _ratio(vision)
    width, image = dims["hidden_size"], {}
    if vision["hidden_size"] != width:
        image["width"] = vision["hidden_size"]
    if vision["num_attention_heads"] != dims["num_attention_heads"]:
        image["heads"] = vision["num_attention_heads"]
    if image_ratio != ratio:
        image["mlp_ratio"] = image_ratio
    depths = (
        {} if vision["num_hidden_layers"] == dims["num_hidden_layers"] else {"image_depth": vision["num_hidden_layers"]}
    )
    return {
        "arch": "encoder",
        "layout": "modality_specific",
        "layout_args": depths,
        "width": width,
        "depth": dims["num_hidden_layers"],
        "heads": dims["num_attention_heads"],
        "mlp_ratio": ratio,
        "gelu": ACT_TO_GELU[dims["hidden_act"]],
        "pool": "cls",
        "embed_dim": c.get("projection_dim", 512),
        "outputs": ["contrastive"],
        "image": {"size": v.get("image_size", 224), "patch": v.get("patch_size", 32), "pre_norm": True, **image},
        "text": {
            "max_len": t.get("max_position_embeddings", 77),
            "vocab_size": t.get("vocab_size", 49408),
            "causal": True,
            "pool": "last",
        },
    }


def _ratio(dims: dict) -> float:
    width, hidden = dims["hidden_size"], dims["intermediate_size"]
    if int(width * (hidden / width)) != hidden:
        raise HFError(f"hf-clip: intermediate_size {hidden} is not representable as a ratio of width {width}")
    return hidden / width


def pixel_stats(path: Path, fmt: str = "hf-clip", default=(OPENAI_MEAN, OPENAI_STD)) -> tuple[Tensor, Tensor]:
    """The processor's pixel mean and std (preprocessor_config.json; `default` where it has none)."""
    f = path / "preprocessor_config.json"
    try:
        p = json.loads(f.read_text()) if f.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{fmt}: {f} is not valid JSON ({e})") from None
    if p.get("do_normalize", True) is False:
        return torch.full((3,), 0.0), torch.full((3,), 1.0)
    return torch.tensor(p.get("image_mean", default[0])), torch.tensor(p.get("image_std", default[1]))


def fold_pixel_stats(w: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """A patch convolution reading (x01 - mean) / std as (weight, bias) reading our [-1, 1] pixels."""
    # x01 = (x + 1) / 2, so the conv of the processor's input is the conv with weights W / (2 std)
    # of x, plus W . ((0.5 - mean) / std).
    return w / (2 * std)[None, :, None, None], (w * ((0.5 - mean) / std)[None, :, None, None]).sum((1, 2, 3))


def read_safetensors(path: Path, fmt: str = "hf-clip") -> dict[str, Tensor]:
    """All tensors of a save_pretrained directory (one file or shards with their index)."""
    index = path / "model.safetensors.index.json"
    try:
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise HFError(f"{fmt}: {index} is not a safetensors index ({e})") from None
    if files is None:
        if not (path / "model.safetensors").exists():
            found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
            raise FileNotFoundError(
                f"{fmt}: no model.safetensors in {path} (found {found}); pytorch_model.bin is not read because "
                "loading it unpickles the file: convert it with save_pretrained(safe_serialization=True)"
            )
        files = ["model.safetensors"]
    raw: dict[str, Tensor] = {}
    for name in files:
        try:
            raw.update(load_file(str(path / name)))
        except FileNotFoundError:
            raise FileNotFoundError(f"{fmt}: {path / name} is missing") from None
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            msg = " ".join(str(e).split())[:200]
            raise HFError(f"{fmt}: {path / name} is not a readable safetensors file ({msg})") from None
    return raw


def weights(path: str | Path, cfg: ModelConfig) -> dict[str, Tensor]:
    """The CLIPModel's tensors under MultimodalTransformer's names (a state dict for `cfg`)."""
    path = Path(path)
    raw = {k: v.float() for k, v in read_safetensors(path).items()}
    want = _expected_names(cfg)
    missing = sorted(want - raw.keys())
    if missing:
        raise HFError(f"hf-clip: {path} lacks tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    out: dict[str, Tensor] = {}
    for ours, hf in _TOWERS.items():
        for i in range(tower_depth(cfg, ours)):
            src, dst = f"{hf}.encoder.layers.{i}.", f"encoder.layers.{i}.streams.{ours}."
            for kind in ("weight", "bias"):
                qkv = [raw[f"{src}self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{dst}attn.qkv.{kind}"] = torch.cat(qkv, 0)
                for a, b in _LAYER.items():
                    out[f"{dst}{b}.{kind}"] = raw[f"{src}{a}.{kind}"]
    out["text_embed.tok.weight"] = raw["text_model.embeddings.token_embedding.weight"]
    out["text_embed.pos"] = raw["text_model.embeddings.position_embedding.weight"]
    out["norm.text.weight"] = raw["text_model.final_layer_norm.weight"]
    out["norm.text.bias"] = raw["text_model.final_layer_norm.bias"]
    out["norm.image.weight"] = raw["vision_model.post_layernorm.weight"]
    out["norm.image.bias"] = raw["vision_model.post_layernorm.bias"]
    out["image_pre_norm.weight"] = raw["vision_model.pre_layrnorm.weight"]
    out["image_pre_norm.bias"] = raw["vision_model.pre_layrnorm.bias"]
    pos = raw["vision_model.embeddings.position_embedding.weight"]
    d, g = cfg.image.width or cfg.width, cfg.image.size // cfg.image.patch
    out["image_embed.cls"] = (raw["vision_model.embeddings.class_embedding"] + pos[0]).reshape(1, 1, d)
    out["image_embed.pos"] = pos[1:].T.reshape(d, g, g).contiguous()
    # CLIP's conv reads (x01 - mean) / std; ours reads x = 2 x01 - 1 (and CLIP's conv has no bias).
    w = raw["vision_model.embeddings.patch_embedding.weight"]
    out["image_embed.proj.weight"], out["image_embed.proj.bias"] = fold_pixel_stats(w, *pixel_stats(path))
    out["contrastive.text_proj.weight"] = raw["text_projection.weight"]
    out["contrastive.image_proj.weight"] = raw["visual_projection.weight"]
    out["contrastive.logit_scale"] = raw["logit_scale"].reshape(())
    return out


def tower_depth(cfg: ModelConfig, stream: str) -> int:
    """Layers of one tower: model.depth, or for the image model.layout_args.image_depth if given."""
    own = cfg.layout_args.get("image_depth") if stream == "image" else None
    return cfg.depth if own is None else own


def _expected_names(cfg: ModelConfig) -> set[str]:
    names = {
        "text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight", "vision_model.post_layernorm.weight",
        "vision_model.pre_layrnorm.weight", "vision_model.embeddings.class_embedding",
        "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.position_embedding.weight",
        "text_projection.weight", "visual_projection.weight", "logit_scale",
    }  # fmt: skip
    for ours, hf in _TOWERS.items():
        for i in range(tower_depth(cfg, ours)):
            names |= {f"{hf}.encoder.layers.{i}.{m}.weight" for m in [*_LAYER, "self_attn.q_proj"]}
    return names


# -- export -------------------------------------------------------------------------------------


def export_problems(cfg: ModelConfig, layout) -> list[str]:
    """What keeps a model of `cfg` (with its built `layout`) from being a CLIPModel; empty if none."""
    problems = []
    if cfg.outputs is None or "contrastive" not in cfg.outputs:
        problems.append("no contrastive head")
    if cfg.image.input != "patches":
        problems.append("model.image.input is regions (CLIP reads pixels)")
    towers = {"text": ("text",), "image": ("image",)}
    seen = {"text": 0, "image": 0}
    for i, s in enumerate(layout):
        attend = dict(s.attend)
        if not attend or any(towers.get(q) != k for q, k in attend.items()) or s.weights != "per_modality":
            problems.append(f"layer {i} is not a dual-encoder layer (layout modality_specific, per-modality weights)")
            break
        if s.cross_attention or not s.ffn:
            problems.append(f"layer {i} has cross-attention or no FFN")
            break
        if any(seen[m] != i for m in attend):
            problems.append(f"layer {i}: a tower skips layers")
            break
        for m in attend:
            seen[m] += 1
    if not cfg.text.causal:
        problems.append("the text tower is bidirectional (CLIP's is causal: model.text.causal: true)")
    if (cfg.text.pool or cfg.pool) != "last":
        problems.append("text is not pooled at its end token (model.text.pool: last)")
    if cfg.pool != "cls":
        problems.append("images are not pooled at the class token (model.pool: cls)")
    if not cfg.image.pre_norm:
        problems.append("no LayerNorm before the image encoder (model.image.pre_norm: true)")
    if cfg.image.stem != "linear":
        problems.append(f"the patch embedding is a {cfg.image.stem} stem, CLIP's is one linear patchify")
    if cfg.logit_bias is not None:
        problems.append("a logit bias (sigmoid loss); CLIP has none")
    if cfg.post_norm or cfg.text.embed_norm or cfg.norm_eps not in (None, 1e-5):
        problems.append("BERT-style LayerNorms (model.post_norm, text.embed_norm or norm_eps); CLIP's are pre-LN, 1e-5")
    if cfg.text.sep_id == 2:
        problems.append("the end token has id 2, which transformers' CLIP pools by argmax instead")
    return problems


def hf_config(cfg: ModelConfig) -> dict:
    """config.json of the CLIPModel equal to a dual encoder of `cfg`."""
    tower = {
        "hidden_size": cfg.width,
        "intermediate_size": int(cfg.width * cfg.mlp_ratio),
        "num_attention_heads": cfg.heads,
        "num_hidden_layers": cfg.depth,
        "hidden_act": GELU_TO_ACT[cfg.gelu],
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "projection_dim": cfg.embed_dim,
    }
    text = {
        **tower,
        "vocab_size": cfg.text.vocab_size,
        "max_position_embeddings": cfg.text.max_len,
        "pad_token_id": cfg.text.pad_id,
        "bos_token_id": cfg.text.cls_id,
        "eos_token_id": cfg.text.sep_id,
    }
    img = cfg.image
    vision = {
        **tower,
        "num_hidden_layers": tower_depth(cfg, "image"),
        "hidden_size": img.width or cfg.width,
        "intermediate_size": int((img.width or cfg.width) * (img.mlp_ratio or cfg.mlp_ratio)),
        "num_attention_heads": img.heads or cfg.heads,
        "image_size": img.size,
        "patch_size": img.patch,
        "num_channels": 3,
    }
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": cfg.embed_dim,
        "logit_scale_init_value": 2.6592,
        "text_config": text,
        "vision_config": vision,
        "torch_dtype": "float32",
    }


def preprocessor_config(cfg: ModelConfig) -> dict:
    """CLIPImageProcessor settings that give our [-1, 1] pixels: mean = std = 0.5."""
    size = cfg.image.size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
        "resample": 3,
    }


def to_hf(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Our dual encoder's state dict under CLIPModel's names (the inverse of `weights`, with our
    pixel normalisation: mean = std = 0.5)."""
    out: dict[str, Tensor] = {}
    d = cfg.image.width or cfg.width
    for ours, hf in _TOWERS.items():
        for i in range(tower_depth(cfg, ours)):
            src, dst = f"encoder.layers.{i}.streams.{ours}.", f"{hf}.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = state[f"{src}attn.qkv.{kind}"].chunk(3, 0)
                for p, t in zip("qkv", (q, k, v), strict=True):
                    out[f"{dst}self_attn.{p}_proj.{kind}"] = t
                for a, b in _LAYER.items():
                    out[f"{dst}{a}.{kind}"] = state[f"{src}{b}.{kind}"]
    out["text_model.embeddings.token_embedding.weight"] = state["text_embed.tok.weight"]
    out["text_model.embeddings.position_embedding.weight"] = state["text_embed.pos"]
    for kind in ("weight", "bias"):
        out[f"text_model.final_layer_norm.{kind}"] = state[f"norm.text.{kind}"]
        out[f"vision_model.post_layernorm.{kind}"] = state[f"norm.image.{kind}"]
        out[f"vision_model.pre_layrnorm.{kind}"] = state[f"image_pre_norm.{kind}"]
    grid = state["image_embed.pos"].reshape(d, -1).T + state["image_embed.proj.bias"]  # the conv's bias
    out["vision_model.embeddings.position_embedding.weight"] = torch.cat([grid.new_zeros(1, d), grid])
    out["vision_model.embeddings.class_embedding"] = state["image_embed.cls"].reshape(d)
    out["vision_model.embeddings.patch_embedding.weight"] = state["image_embed.proj.weight"]
    out["text_projection.weight"] = state["contrastive.text_proj.weight"]
    out["visual_projection.weight"] = state["contrastive.image_proj.weight"]
    out["logit_scale"] = state["contrastive.logit_scale"].reshape(())
    return {k: v.detach().float().contiguous() for k, v in out.items()}
