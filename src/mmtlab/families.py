"""Model families: everything the rest of mmtlab knows about an architecture, in one entry each.

torchtitan's `ModelSpec` idea: a run config names a family (`model.arch`), and this registry says
which model class builds it, what one training item is, which forward passes the objectives run,
which objectives and evaluations apply, which model fields only it reads, and how its config is
completed and its frozen parts loaded. Nothing outside this file tells families apart by name.

Adding a family = one model file (the class, plus its hooks if it has frozen parts) and one entry
below; see docs/architecture.md. Classes and hooks are named as "module:attribute" and imported on
first use, so the config layer can read the rules here without importing the models (this module
imports nothing of mmtlab's).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# What one training item is (data/loader.py reads each kind).
DataKind = Literal["pairs", "images", "captions", "speech", "documents", "document_text"]
# How StepContext (objectives/__init__.py) runs the forward passes:
#   encoder  - encode_image / encode_text and one joint pass (MLM, MRM, ITM)
#   decoder  - image tokens once, a contrastive text pass and a generative pass (MaMMUT, CoCa, ...)
#   sequence - one next-token pass over the whole batch (a causal LM, Flamingo)
#   data2vec - EMA teacher and masked student per modality
Passes = Literal["encoder", "decoder", "sequence", "data2vec"]

CONTRASTIVE = frozenset({"contrastive", "siglip", "focal_contrastive", "zloss"})
ENCODER_ONLY = frozenset({"mlm", "mrm_cls", "mrm_kl", "mrm_regress", "itm", "itm_contrastive"})


def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _encoder_data(cfg) -> DataKind:
    return "captions" if cfg.data.text_only else "pairs"


def _data2vec_data(cfg) -> DataKind:
    mods = set(cfg.model.data2vec.modalities)
    if mods == {"image", "text"}:
        return "pairs"
    return {"image": "images", "text": "captions", "speech": "speech"}[mods.pop()]


def _lm_data(cfg) -> DataKind:
    return "document_text" if cfg.data.interleaved else "captions"


@dataclass(frozen=True)
class Family:
    model: str  # "module:Class", built as Class(model_config)
    passes: Passes
    data: Callable[[Any], DataKind] = lambda cfg: "pairs"
    layout: str | None = None  # its own layout preset; None: any encoder layout
    objectives: frozenset[str] = field(default_factory=frozenset)  # the objectives it trains with
    generative: bool = False  # predicts next tokens (objective caption, data.task vqa)
    fields: tuple[str, ...] = ()  # model fields only this family reads (an error elsewhere; "text.causal": nested)
    complete: str | None = None  # "module:fn(cfg) -> cfg": config from other runs, before training
    load_pretrained: str | None = None  # "module:fn(model) -> int": frozen parts, before training
    # `mmtlab eval NAME` that apply (the contrastive ones, detect among them, need the head too: detection's
    # classifier is the text side's embeddings of the category names)
    evals: tuple[str, ...] = ()

    @property
    def model_class(self) -> type:
        return _import(self.model)

    def hook(self, name: str) -> Callable | None:
        path = getattr(self, name)
        return None if path is None else _import(path)


_DECODER = dict(
    passes="decoder",
    objectives=CONTRASTIVE | {"caption"},
    generative=True,
    evals=("retrieval", "zeroshot", "caption", "vqa", "detect"),
)

FAMILIES: dict[str, Family] = {
    # Every attention layout of the Hendricks et al. study: dual, merged, asymmetric, co-attention, mixed.
    "encoder": Family(
        "mmtlab.models.model:MultimodalTransformer",
        passes="encoder",
        data=_encoder_data,
        objectives=CONTRASTIVE | ENCODER_ONLY,
        # CLIP's towers (models/hf_clip.py); BERT's and Hugging Face ViT's / ViLT's blocks (models/hf_bert.py)
        fields=(
            "text.causal",
            "text.pool",
            "image.pre_norm",
            "image.width",
            "image.heads",
            "image.mlp_ratio",
            "norm_eps",
            "post_norm",
            "text.embed_norm",
        ),
        evals=("retrieval", "zeroshot", "mlm", "probe", "ablation", "detect"),
    ),
    "mammut": Family("mmtlab.models.mammut:MaMMUT", layout="mammut", **_DECODER),
    "coca": Family("mmtlab.models.coca:CoCa", layout="coca", fields=("caption_queries",), **_DECODER),
    "dual_captioner": Family("mmtlab.models.dual_captioner:DualEncoderCaptioner", layout="dual_captioner", **_DECODER),
    "data2vec": Family(
        "mmtlab.models.data2vec:Data2Vec",
        passes="data2vec",
        data=_data2vec_data,
        layout="modality_specific",
        objectives=frozenset({"data2vec"}),
        fields=("data2vec", "speech"),
        evals=("probe",),
    ),
    "lm": Family(
        "mmtlab.models.lm:CausalLM",
        passes="sequence",
        data=_lm_data,
        layout="lm",
        objectives=frozenset({"caption"}),
        generative=True,
    ),
    "flamingo": Family(
        "mmtlab.models.flamingo:Flamingo",
        passes="sequence",
        data=lambda cfg: "documents",
        layout="flamingo",
        objectives=frozenset({"caption"}),
        generative=True,
        fields=("flamingo",),
        complete="mmtlab.models.flamingo:with_frozen_parts",
        load_pretrained="mmtlab.models.flamingo:load_frozen_runs",
        evals=("fewshot", "gates"),
    ),
}

# Layout presets that belong to one family (the rest are encoder layouts).
FAMILY_LAYOUTS = {f.layout for f in FAMILIES.values() if f.layout and f.layout != "modality_specific"}


def family(arch: str) -> Family:
    try:
        return FAMILIES[arch]
    except KeyError:
        raise KeyError(f"model.arch {arch!r}: unknown family; known: {', '.join(FAMILIES)}") from None


def family_of(model_or_cfg) -> Family:
    """The family of a model (its `.cfg.arch`), a ModelConfig or a RunConfig."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    cfg = getattr(cfg, "model", cfg)
    return family(cfg.arch)
