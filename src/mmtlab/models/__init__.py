"""Model factory: a run or model config in, an nn.Module out."""

from __future__ import annotations

from mmtlab.config import ModelConfig, RunConfig
from mmtlab.models.fusion import PRESETS, FusionEncoder, LayerSpec, build_layout
from mmtlab.models.model import MultimodalTransformer

__all__ = ["PRESETS", "FusionEncoder", "LayerSpec", "MultimodalTransformer", "build_layout", "build_model"]


def build_model(cfg: RunConfig | ModelConfig) -> MultimodalTransformer:
    model_cfg = cfg.model if isinstance(cfg, RunConfig) else cfg
    return MultimodalTransformer(model_cfg)
