"""Model factory: a run or model config in, an nn.Module out."""

from __future__ import annotations

from mmtlab.config import ModelConfig, RunConfig
from mmtlab.families import family
from mmtlab.models.coca import CoCa
from mmtlab.models.data2vec import Data2Vec
from mmtlab.models.dual_captioner import DualEncoderCaptioner
from mmtlab.models.flamingo import Flamingo
from mmtlab.models.fusion import PRESETS, FusionEncoder, LayerSpec, build_layout
from mmtlab.models.lm import CausalLM
from mmtlab.models.mammut import MaMMUT
from mmtlab.models.model import MultimodalTransformer

__all__ = [
    "CausalLM",
    "PRESETS",
    "CoCa",
    "Data2Vec",
    "DualEncoderCaptioner",
    "Flamingo",
    "FusionEncoder",
    "LayerSpec",
    "MaMMUT",
    "MultimodalTransformer",
    "build_layout",
    "build_model",
]


def build_model(cfg: RunConfig | ModelConfig):
    """The model of `cfg`'s family (mmtlab/families.py), freshly initialised."""
    model_cfg = cfg.model if isinstance(cfg, RunConfig) else cfg
    return family(model_cfg.arch).model_class(model_cfg)
