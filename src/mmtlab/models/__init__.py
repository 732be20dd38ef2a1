"""Model factory: a run or model config in, an nn.Module out."""

from __future__ import annotations

from mmtlab.config import ModelConfig, RunConfig
from mmtlab.models.coca import CoCa
from mmtlab.models.data2vec import Data2Vec
from mmtlab.models.dual_captioner import DualEncoderCaptioner
from mmtlab.models.flamingo import Flamingo
from mmtlab.models.fusion import PRESETS, FusionEncoder, LayerSpec, build_layout
from mmtlab.models.lm import CausalLM
from mmtlab.models.mammut import MaMMUT
from mmtlab.models.model import MultimodalTransformer

__all__ = [
    "ARCHS",
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

# Model families by `model.arch`. Every family provides `cfg`, `contrastive` (a ContrastiveHead or
# None), `encode_image`/`encode_text` when it has a contrastive head, and `num_params()`. The
# decoder families (models/decoder.py) also caption: `caption_logits`, `decode`, `generate`.
ARCHS = {
    "encoder": MultimodalTransformer,
    "mammut": MaMMUT,
    "coca": CoCa,
    "dual_captioner": DualEncoderCaptioner,
    "data2vec": Data2Vec,
    "lm": CausalLM,
    "flamingo": Flamingo,
}


def build_model(cfg: RunConfig | ModelConfig):
    model_cfg = cfg.model if isinstance(cfg, RunConfig) else cfg
    return ARCHS[model_cfg.arch](model_cfg)
