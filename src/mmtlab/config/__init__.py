"""Run configuration: pydantic sections (schema.py, and the families' own in sections.py), YAML
loading with model bases, `--set a.b=c` overrides and one-line errors (load.py), the objectives and
their options (objectives.py), and the one step that derives every field (resolve.py).

A run config names a model config (a file in configs/models/, optionally with overrides) or gives
one inline. Every field is validated; unknown fields are errors, so a typo never silently falls
back to a default.
"""

from mmtlab.config.base import ConfigError, Strict
from mmtlab.config.load import CONFIG_DIR, apply_overrides, dump_config, format_validation_error, load_config
from mmtlab.config.objectives import MRM_OBJECTIVES, OBJECTIVE_HEADS, SIGMOID_LOSSES, ObjectiveConfig
from mmtlab.config.resolve import resolve
from mmtlab.config.schema import (
    DataConfig,
    EvalConfig,
    ImageConfig,
    ModelConfig,
    RegionsConfig,
    RunConfig,
    TextConfig,
    TokenizerConfig,
    TrainConfig,
)
from mmtlab.config.sections import (
    DATA2VEC_DEFAULTS,
    Data2VecConfig,
    Data2VecModalityConfig,
    FlamingoConfig,
    SpeechConfig,
)

__all__ = [
    "CONFIG_DIR", "DATA2VEC_DEFAULTS", "MRM_OBJECTIVES", "OBJECTIVE_HEADS", "SIGMOID_LOSSES", "ConfigError",
    "Data2VecConfig", "Data2VecModalityConfig", "DataConfig", "EvalConfig", "FlamingoConfig", "ImageConfig",
    "ModelConfig", "ObjectiveConfig", "RegionsConfig", "RunConfig", "SpeechConfig", "Strict", "TextConfig",
    "TokenizerConfig", "TrainConfig", "apply_overrides", "dump_config", "format_validation_error", "load_config",
    "resolve",
]  # fmt: skip
