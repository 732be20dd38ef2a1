"""The towers' input sections of a model config: image (patches or regions) and text."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mmtlab.config.base import MAX_PIXELS, MAX_TOKENS, MAX_WIDTH, Strict


class ImageConfig(Strict):
    size: int = Field(64, gt=0, le=MAX_PIXELS, description="input resolution in pixels (square)")
    patch: int = Field(8, gt=0, le=MAX_PIXELS, description="ViT patch size in pixels")
    channels: Literal[3] = Field(3, description="RGB: images are decoded to 3 channels")
    input: Literal["patches", "regions"] = Field(
        "patches", description="pixels cut into ViT patches, or toy-detector regions (data.regions)"
    )
    region_dim: int | None = Field(None, description="region feature size; filled in from the detector")
    region_classes: int | None = Field(None, description="detector classes; filled in from the detector")
    stem: Literal["linear", "conv"] = Field(
        "linear",
        description="patch embedding: linear (ViT patchify) or conv (Xiao et al. 2021: log2(patch) stride-2 3x3 "
        "convs with BatchNorm+ReLU, then 1x1; patch must be a power of two)",
    )
    cpe: bool = Field(
        False, description="cropped positional embeddings (RO-ViT, MaMMUT): train on a random crop of the grid"
    )
    cpe_scale: tuple[float, float] = Field((0.1, 1.0), description="CPE: range of the crop's area fraction")
    cpe_ratio: tuple[float, float] = Field((0.5, 2.0), description="CPE: range of the crop's aspect ratio")
    pre_norm: bool = Field(False, description="a LayerNorm on the image tokens before the encoder (CLIP's ViT)")
    width: int | None = Field(None, gt=0, le=MAX_WIDTH, description="the image tower's own width; null: model.width")
    heads: int | None = Field(None, gt=0, le=MAX_WIDTH, description="its attention heads; null: model.heads")
    mlp_ratio: float | None = Field(None, gt=0, description="its MLP ratio; null: model.mlp_ratio")

    @model_validator(mode="after")
    def _cpe_ranges(self):
        if self.stem == "conv" and self.patch & (self.patch - 1):
            raise ValueError(f"image.stem conv needs a power-of-two image.patch, got {self.patch}")
        lo, hi = self.cpe_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"image.cpe_scale must satisfy 0 < low <= high <= 1, got {self.cpe_scale}")
        if not 0 < self.cpe_ratio[0] <= self.cpe_ratio[1]:
            raise ValueError(f"image.cpe_ratio must satisfy 0 < low <= high, got {self.cpe_ratio}")
        return self


class TextConfig(Strict):
    max_len: int = Field(32, gt=1, le=MAX_TOKENS, description="captions are truncated to this many tokens")
    vocab_size: int | None = Field(None, description="filled in from the tokenizer")
    pad_id: int = 0
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4
    causal: bool = Field(False, description="text queries see only earlier text tokens (CLIP's text tower)")
    embed_norm: bool = Field(False, description="a LayerNorm on the token + position embeddings (BERT, ViLT)")
    pool: Literal["cls", "mean", "last"] | None = Field(
        None, description="text pooling: first token, mean, or the last real token (CLIP's end token); null: model.pool"
    )
