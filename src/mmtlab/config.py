"""Run configuration: pydantic models, YAML loading, `--set a.b=c` overrides, one-line errors.

A run config names a model config (a file in configs/models/, optionally with overrides) or gives
one inline. Every field is validated; unknown fields are errors, so a typo never silently falls
back to a default.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A user mistake in a config: the message names the field and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageConfig(Strict):
    size: int = Field(64, gt=0, description="input resolution in pixels (square)")
    patch: int = Field(8, gt=0, description="ViT patch size in pixels")
    channels: int = 3
    input: Literal["patches", "regions"] = Field(
        "patches", description="pixels cut into ViT patches, or toy-detector regions (data.regions)"
    )
    region_dim: int | None = Field(None, description="region feature size; filled in from the detector")
    region_classes: int | None = Field(None, description="detector classes; filled in from the detector")
    cpe: bool = Field(
        False, description="cropped positional embeddings (RO-ViT, MaMMUT): train on a random crop of the grid"
    )
    cpe_scale: tuple[float, float] = Field((0.1, 1.0), description="CPE: range of the crop's area fraction")
    cpe_ratio: tuple[float, float] = Field((0.5, 2.0), description="CPE: range of the crop's aspect ratio")

    @model_validator(mode="after")
    def _cpe_ranges(self):
        lo, hi = self.cpe_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"image.cpe_scale must satisfy 0 < low <= high <= 1, got {self.cpe_scale}")
        if not 0 < self.cpe_ratio[0] <= self.cpe_ratio[1]:
            raise ValueError(f"image.cpe_ratio must satisfy 0 < low <= high, got {self.cpe_ratio}")
        return self


class TextConfig(Strict):
    max_len: int = Field(32, gt=1, description="captions are truncated to this many tokens")
    vocab_size: int | None = Field(None, description="filled in from the tokenizer")
    pad_id: int = 0
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4


OutputHead = Literal["contrastive", "mlm", "mrm", "itm"]
# Families with a text decoder (models/decoder.py); each has a layout preset of the same name.
DECODER_ARCHS = ("mammut", "coca", "dual_captioner")


class ModelConfig(Strict):
    arch: Literal["encoder", "mammut", "coca", "dual_captioner"] = Field(
        "encoder", description="model family (models/__init__.py: ARCHS)"
    )
    layout: Literal[
        "merged",
        "modality_specific",
        "asym_text_queries",
        "asym_image_queries",
        "coattention",
        "lxmert",
        "mixed",
        "mammut",
        "coca",
        "dual_captioner",
    ] = Field("modality_specific", description="attention layout preset; decoder families: the arch's own")
    layout_args: dict[str, Any] = Field(default_factory=dict, description="extra preset arguments, e.g. {k: 2}")
    width: int = Field(128, gt=0)
    depth: int = Field(4, ge=0)
    heads: int = Field(4, gt=0, description="attention heads")
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    pool: Literal["cls", "mean"] = "cls"
    embed_dim: int = Field(128, gt=0, description="joint embedding size of the contrastive head")
    outputs: list[OutputHead] | None = Field(None, description="output heads; default: what the objectives need")
    image: ImageConfig = Field(default_factory=ImageConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    logit_bias: float | None = Field(
        None, description="learned bias of the contrastive logits; -10 (SigLIP) when a sigmoid loss is used"
    )
    caption_queries: int | None = Field(
        None, gt=0, description="coca: attention-pool the image to N learned queries for the decoder (null: all tokens)"
    )

    @model_validator(mode="before")
    @classmethod
    def _layout_of_family(cls, data):
        if isinstance(data, dict) and data.get("arch") in DECODER_ARCHS and "layout" not in data:
            data = {**data, "layout": data["arch"]}
        return data

    @model_validator(mode="after")
    def _family_layout(self):
        if self.arch in DECODER_ARCHS and self.layout != self.arch:
            raise ValueError(f"layout {self.layout!r} does not fit arch {self.arch!r} (use layout: {self.arch})")
        if self.arch == "encoder" and self.layout in DECODER_ARCHS:
            raise ValueError(f"layout {self.layout!r} needs arch: {self.layout}")
        if self.caption_queries is not None and self.arch != "coca":
            raise ValueError("caption_queries applies to arch coca only")
        return self

    @model_validator(mode="after")
    def _divisible(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.image.size % self.image.patch:
            raise ValueError(f"image.size {self.image.size} must be a multiple of image.patch {self.image.patch}")
        return self


class TokenizerConfig(Strict):
    path: str | None = Field(None, description="a tokenizer.json to use; null trains WordPiece on the train captions")
    vocab_size: int = Field(4096, ge=64)


class RegionsConfig(Strict):
    num_regions: int = Field(8, ge=1, le=100, description="proposal boxes per image (gold jittered + distractors)")
    seed: int = Field(0, description="proposal seed")
    detector: str | None = Field(None, description="toy detector safetensors; default: the one shipped")
    cache_dir: str | None = Field(None, description="region feature cache; default $MMTLAB_CACHE or ~/.cache/mmtlab")


class DataConfig(Strict):
    root: str = Field("data/emoji-scenes", description="dataset directory (built by `mmtlab data build`)")
    format: Literal["karpathy", "webdataset"] = Field(
        "karpathy", description="karpathy: JSON + image files; webdataset: streamed from tar shards (data.shards)"
    )
    shards: str | None = Field(
        None,
        description="webdataset: brace pattern or ::-separated list of .tar shards, e.g. "
        "/data/laion/{000000..041407}.tar; default: root/shards/<train_split>-*.tar",
    )
    resampled: bool = Field(False, description="webdataset: draw shards with replacement (no epochs)")
    shuffle_buffer: int = Field(1000, ge=0, description="webdataset: samples in the shuffle buffer (0: no shuffle)")
    stream_resume: Literal["exact", "reseed"] = Field(
        "exact",
        description="webdataset resume: exact replays the consumed samples (reads, does not decode, them); "
        "reseed starts a fresh stream seeded by the step",
    )
    annotations: str | None = Field(None, description="Karpathy JSON; default: the one file dataset_*.json in root")
    images: str | None = Field(None, description="image root; default: root/images (emoji-scenes) or root")
    train_split: str = "pretrain"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = Field(0, ge=0)
    max_train_pairs: int | None = Field(None, gt=0, description="use only the first N training pairs")
    regions: RegionsConfig = Field(default_factory=RegionsConfig, description="region inputs (model.image.input)")

    task: Literal["captions", "vqa"] = Field(
        "captions", description="training text: captions, or VQA prompts from each image's boxes (answer-only loss)"
    )

    @model_validator(mode="after")
    def _stream_fields(self):
        if self.format == "webdataset" and self.max_train_pairs is not None:
            raise ValueError("data.max_train_pairs applies to format karpathy; a webdataset stream has no length")
        return self


class TrainConfig(Strict):
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(
        128, gt=0, description="pairs per micro-batch over all processes (under torchrun each takes batch_size / N)"
    )
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    grad_clip: float | None = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16"] = "fp32"
    data_parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp replicates the model, fsdp shards it per block (FSDP2)"
    )
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in backward")
    compile: bool = Field(False, description="torch.compile each block")
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(250, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    eval_every: int | None = Field(None, gt=0, description="validation retrieval every N steps")
    eval_max_images: int = Field(500, gt=0)
    threads: int | None = Field(None, gt=0, description="torch intra-op threads; default: all cores")
    init_from: str | None = Field(None, description="run dir or checkpoint to initialise matching weights from")


ObjectiveName = Literal[
    "contrastive",
    "siglip",
    "focal_contrastive",
    "zloss",
    "mlm",
    "caption",
    "mrm_cls",
    "mrm_kl",
    "mrm_regress",
    "itm",
    "itm_contrastive",
]
MRM_OBJECTIVES = ("mrm_cls", "mrm_kl", "mrm_regress")
# The output head each objective trains (caption uses the decoder's tied LM head, always present).
OBJECTIVE_HEADS = {
    "contrastive": "contrastive",
    "siglip": "contrastive",
    "focal_contrastive": "contrastive",
    "zloss": "contrastive",
    "mlm": "mlm",
    "mrm_cls": "mrm",
    "mrm_kl": "mrm",
    "mrm_regress": "mrm",
    "itm": "itm",
    "itm_contrastive": "itm",
}
SIGMOID_LOSSES = ("siglip", "focal_contrastive")


class ObjectiveConfig(Strict):
    weight: float = Field(1.0, ge=0)
    mask_prob: float | None = Field(
        None, gt=0, lt=1, description="mlm: fraction of tokens to mask; mrm_*: of regions (0.15)"
    )
    negatives: Literal["random", "hard"] | None = Field(
        None, description="itm / itm_contrastive: random batch captions, or hard ones mined from contrastive similarity"
    )
    loss: Literal["mse", "huber"] | None = Field(None, description="mrm_regress: regression loss (mse)")
    candidates: int | None = Field(
        None, ge=2, description="itm_contrastive: captions scored per image, the positive included (32)"
    )
    gamma: float | None = Field(None, ge=0, description="focal_contrastive: focusing parameter (1.0)")


class EvalConfig(Strict):
    batch_size: int = Field(256, gt=0)


class RunConfig(Strict):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    objectives: dict[ObjectiveName, ObjectiveConfig] = Field(default_factory=lambda: {"contrastive": ObjectiveConfig()})
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("objectives", mode="before")
    @classmethod
    def _weights_as_numbers(cls, v):
        if isinstance(v, dict):
            return {k: {"weight": w} if isinstance(w, int | float) else w for k, w in v.items()}
        return v

    @model_validator(mode="after")
    def _heads_for_objectives(self):
        if not self.objectives:
            raise ValueError("objectives: at least one objective is needed (contrastive, mlm, caption, ...)")
        _check_objective_options(self)
        decoder = self.model.arch in DECODER_ARCHS
        if "caption" in self.objectives and not decoder:
            raise ValueError(f"objectives.caption needs a text decoder: model.arch one of {', '.join(DECODER_ARCHS)}")
        if "mlm" in self.objectives and decoder:
            raise ValueError(f"objectives.mlm needs model.arch encoder (got {self.model.arch}; use caption)")
        if self.data.task == "vqa" and not decoder:
            raise ValueError("data.task vqa trains a generative answer: model.arch must be a decoder family")
        if any(o in self.objectives for o in SIGMOID_LOSSES) and self.model.logit_bias is None:
            self.model.logit_bias = -10.0  # SigLIP's initialisation (Zhai et al. 2023)
        needed = list(dict.fromkeys(OBJECTIVE_HEADS[o] for o in self.objectives if o in OBJECTIVE_HEADS))
        if self.model.outputs is None:
            self.model.outputs = needed
        else:
            missing = [h for h in needed if h not in self.model.outputs]
            if missing:
                raise ValueError(f"model.outputs lacks {missing}, needed by the objectives")
        return self


# Which objectives each option applies to.
_OPTION_OWNERS = {
    "mask_prob": ("mlm", *MRM_OBJECTIVES),
    "negatives": ("itm", "itm_contrastive"),
    "loss": ("mrm_regress",),
    "candidates": ("itm_contrastive",),
    "gamma": ("focal_contrastive",),
}


def _check_objective_options(cfg: RunConfig) -> None:
    for name, oc in cfg.objectives.items():
        for option, owners in _OPTION_OWNERS.items():
            if getattr(oc, option) is not None and name not in owners:
                raise ValueError(f"objectives.{name}.{option}: only applies to {', '.join(owners)}")
    mrm = [n for n in MRM_OBJECTIVES if n in cfg.objectives]
    if mrm and cfg.model.image.input != "regions":
        raise ValueError(f"objectives.{mrm[0]}: masked region modelling needs model.image.input: regions")
    probs = {cfg.objectives[n].mask_prob for n in mrm} - {None}
    if len(probs) > 1:
        raise ValueError(f"objectives: {', '.join(mrm)} share one region masking; give them the same mask_prob")
    for name in ("itm", "itm_contrastive"):
        oc = cfg.objectives.get(name)
        if oc is not None and oc.negatives == "hard" and "contrastive" not in cfg.objectives:
            raise ValueError(
                f"objectives.{name}.negatives: hard negatives are mined from contrastive similarities; "
                "add the contrastive objective"
            )


# ---------------------------------------------------------------------------------------------


def _model_file(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    p = CONFIG_DIR / "models" / f"{name}.yaml"
    if not p.exists():
        known = sorted(f.stem for f in (CONFIG_DIR / "models").glob("*.yaml"))
        raise ConfigError(f"model: unknown model config {name!r}; known: {', '.join(known)} (or a path to a .yaml)")
    return p


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_model(raw: dict) -> dict:
    model = raw.get("model")
    if isinstance(model, str):
        model = {"base": model}
    if isinstance(model, dict) and "base" in model:
        base = _read_yaml(_model_file(model["base"]))
        model = _deep_merge(base, {k: v for k, v in model.items() if k != "base"})
    if model is not None:
        raw = {**raw, "model": model}
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; values are parsed as YAML (numbers, lists, null...)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.setdefault(p, {}), dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = node[p]
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def _fields_at(loc: tuple) -> list[str] | None:
    """Field names allowed at the parent of `loc`, for 'unknown field' errors."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            continue
        return None
    return list(getattr(model, "model_fields", {}))


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "config"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(loc)
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{where}: unknown field{hint}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{where}: {err['msg']}{got_s}")
    return "; ".join(lines)


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML path or dict, apply dotted overrides, validate."""
    raw = _read_yaml(Path(source)) if isinstance(source, str | Path) else copy.deepcopy(source)
    raw = _resolve_model(raw)
    raw = apply_overrides(raw, overrides or [])
    raw = _resolve_model(raw)  # an override may have named a new base model
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
