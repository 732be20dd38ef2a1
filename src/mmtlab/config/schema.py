"""The run config schema: pydantic sections with one-line errors. Validators here only validate;
every derived field (heads from objectives, vocabulary from the tokenizer, ...) is filled in by
config/resolve.py. A family's rules (its layout, objectives, fields) come from its registry entry
(mmtlab/families.py), so no family is named here."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mmtlab.config.base import (
    MAX_ACCUM,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_SEED,
    MAX_WIDTH,
    Strict,
)
from mmtlab.config.objectives import (
    ObjectiveConfig,
    ObjectiveName,
    check_objective_options,
    heads_for,
)
from mmtlab.config.sections import Data2VecConfig, FlamingoConfig, SpeechConfig, VideoConfig
from mmtlab.config.towers import ImageConfig, TextConfig
from mmtlab.families import FAMILIES, FAMILY_LAYOUTS, family

OutputHead = Literal["contrastive", "mlm", "mrm", "itm"]


class ModelConfig(Strict):
    arch: str = Field("encoder", description="model family: a name in mmtlab/families.py (encoder, mammut, ...)")
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
        "lm",
        "flamingo",
    ] = Field("modality_specific", description="attention layout preset; decoder families: the arch's own")
    layout_args: dict[str, Any] = Field(default_factory=dict, description="extra preset arguments, e.g. {k: 2}")
    width: int = Field(128, gt=0, le=MAX_WIDTH)
    depth: int = Field(4, ge=0, le=MAX_DEPTH)
    heads: int = Field(4, gt=0, le=MAX_WIDTH, description="attention heads")
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    gelu: Literal["exact", "tanh", "quick"] = Field(
        "exact", description="the MLPs' GELU: exact (erf), tanh (GPT-2's) or quick, x * sigmoid(1.702 x) (CLIP's)"
    )
    pool: Literal["cls", "mean"] = "cls"
    norm_eps: float | None = Field(
        None, gt=0, lt=1, description="the LayerNorms' epsilon (BERT, Hugging Face ViT / ViLT: 1e-12); null: 1e-5"
    )
    post_norm: bool = Field(
        False, description="post-LN blocks: LayerNorm after each residual sum, no final LayerNorm (BERT)"
    )
    embed_dim: int = Field(128, gt=0, le=MAX_WIDTH, description="joint embedding size of the contrastive head")
    outputs: list[OutputHead] | None = Field(None, description="output heads; default: what the objectives need")
    image: ImageConfig = Field(default_factory=ImageConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    logit_bias: float | None = Field(
        None, description="learned bias of the contrastive logits; -10 (SigLIP) when a sigmoid loss is used"
    )
    caption_queries: int | None = Field(
        None, gt=0, description="coca: attention-pool the image to N learned queries for the decoder (null: all tokens)"
    )
    speech: SpeechConfig | None = Field(None, description="speech front end (data2vec speech models)")
    data2vec: Data2VecConfig | None = Field(None, description="teacher-student settings (arch: data2vec)")
    flamingo: FlamingoConfig | None = Field(None, description="frozen parts and new modules (arch: flamingo)")
    video: VideoConfig | None = Field(
        None, description="video encoder: sparse tubes + sparse frames (decoder families)"
    )

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data):
        # Parsing defaults that depend on the family: its own layout preset, an empty data2vec section
        # (filled with per-modality defaults) and the speech front end a speech model needs.
        if not isinstance(data, dict) or data.get("arch", "encoder") not in FAMILIES:
            return data
        fam = family(data.get("arch", "encoder"))
        if fam.layout and "layout" not in data:
            data = {**data, "layout": fam.layout}
        if "data2vec" in fam.fields:
            data = {**data, "data2vec": data.get("data2vec") or {}}
            mods = data["data2vec"].get("modalities", []) if isinstance(data["data2vec"], dict) else []
            if isinstance(mods, list) and "speech" in mods and data.get("speech") is None:
                data["speech"] = {}
        return data

    @field_validator("arch")
    @classmethod
    def _known_family(cls, arch: str) -> str:
        if arch not in FAMILIES:
            raise ValueError(f"unknown family {arch!r}; known: {', '.join(FAMILIES)} (mmtlab/families.py)")
        return arch

    @model_validator(mode="after")
    def _family_rules(self):
        fam = family(self.arch)
        if fam.layout and self.layout != fam.layout:
            raise ValueError(f"layout {self.layout!r} does not fit arch {self.arch!r} (use layout: {fam.layout})")
        if not fam.layout and self.layout in FAMILY_LAYOUTS:
            owner = next(name for name, f in FAMILIES.items() if f.layout == self.layout)
            raise ValueError(f"layout {self.layout!r} needs arch: {owner}")
        for name in FAMILY_FIELDS:
            owners = [a for a, f in FAMILIES.items() if name in f.fields]
            value = self
            for part in name.split("."):
                value = getattr(value, part)
            if value is not None and value is not False and name not in fam.fields:
                raise ValueError(f"{name}: only used with model.arch {' or '.join(owners)}")
        if "flamingo" in fam.fields and self.flamingo is None:
            raise ValueError("flamingo: the section is required by model.arch: flamingo")
        return self

    @model_validator(mode="after")
    def _divisible(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        img = self.image
        if (img.width or self.width) % (img.heads or self.heads):
            raise ValueError(
                f"image.width {img.width or self.width} must be divisible by image.heads {img.heads or self.heads}"
            )
        own = [f"image.{k}" for k in ("width", "heads", "mlp_ratio") if getattr(img, k) is not None]
        if own and (
            self.layout != "modality_specific" or self.layout_args.get("weights", "per_modality") != "per_modality"
        ):
            raise ValueError(
                f"{own[0]}: an image tower of its own size needs layout modality_specific (per-modality weights)"
            )
        if self.image.size % self.image.patch:
            raise ValueError(f"image.size {self.image.size} must be a multiple of image.patch {self.image.patch}")
        return self

    @model_validator(mode="after")
    def _video_fits(self):
        v = self.video
        if v is None:
            return self
        clip = (v.frames, self.image.size, self.image.size)
        for i, t in enumerate(v.tubes):
            if any(o + k > s for o, k, s in zip(t.offset, t.kernel, clip, strict=True)):
                raise ValueError(
                    f"video.tubes[{i}]: kernel {tuple(t.kernel)} from offset {tuple(t.offset)} does not fit a clip of "
                    f"video.frames x image.size = {clip[0]}x{clip[1]}x{clip[2]} (the default tubes are for 8 x 64 px)"
                )
        if v.frame_stride is not None and v.frame_start >= v.frames:
            raise ValueError(f"video.frame_start {v.frame_start} must be below video.frames {v.frames}")
        return self

    @model_validator(mode="after")
    def _data2vec(self):
        d = self.data2vec
        if d is None:
            return self
        if "speech" in d.modalities and self.speech is None:
            raise ValueError("speech: a speech model needs the speech section")
        for m in d.modalities:
            mc = getattr(d, m)
            if mc.top_k is not None and mc.top_k > self.depth:
                raise ValueError(f"data2vec.{m}.top_k {mc.top_k} exceeds depth {self.depth}")
            if d.efficient and self.width % mc.decoder_groups:
                raise ValueError(f"data2vec.{m}.decoder_groups {mc.decoder_groups} must divide width {self.width}")
        return self


# Model fields that only some families read (their sections, coca's caption_queries, the encoder's
# CLIP switches); set (not None, not False) elsewhere they are errors.
FAMILY_FIELDS = sorted({name for f in FAMILIES.values() for name in f.fields})


class TokenizerConfig(Strict):
    path: str | None = Field(None, description="a tokenizer.json to use; null trains WordPiece on the train captions")
    vocab_size: int = Field(4096, ge=64)


class RegionsConfig(Strict):
    num_regions: int = Field(8, ge=1, le=100, description="proposal boxes per image (gold jittered + distractors)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="proposal seed")
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
    frame_stride: int = Field(
        1, ge=1, description="video: read every N-th frame of a clip (model.video.frames; Flamingo: max_frames)"
    )
    train_split: str = "pretrain"
    val_split: str = "val"
    test_split: str = "test"
    num_workers: int = Field(0, ge=0, le=256)
    background_runs: int | None = Field(
        None,
        gt=0,
        description="hard negatives: batches made of runs of N pairs whose images share the background "
        "colour (data/grouped.py), so within a run only the objects tell captions apart; null: random batches",
    )
    crop_scale: tuple[float, float] | None = Field(
        None,
        description="augmentation: random resized crop of each training image, area fraction in this range, "
        "e.g. [0.6, 1.0] (no flips: they break left/right captions); null: none",
    )
    max_train_pairs: int | None = Field(None, gt=0, description="use only the first N training pairs")
    regions: RegionsConfig = Field(default_factory=RegionsConfig, description="region inputs (model.image.input)")

    text_only: bool = Field(
        False,
        description="train on the captions alone, no image input (with objectives mlm): the text-only "
        "baseline of the cross-modal ablation (`mmtlab ablate --baseline`)",
    )
    task: Literal["captions", "vqa"] = Field(
        "captions", description="training text: captions, or VQA prompts from each image's boxes (answer-only loss)"
    )
    speech_root: str | None = Field(
        None, description="spoken captions (tools/render_spoken_captions.py); null: the shipped set, or <root>-speech"
    )
    speech_captions: int | None = Field(
        None, gt=0, description="spoken captions to train on; more than the shipped set are rendered on first use"
    )

    interleaved: str | None = Field(
        None,
        description="interleaved image-text documents: a directory of *.jsonl shards or one .jsonl file "
        "(OBELICS-like {images, texts} or MMC4-like {text_list, image_info}); `mmtlab data interleaved` writes them",
    )
    mixture: dict[Literal["interleaved", "pairs"], float] | None = Field(
        None,
        description="flamingo: per-dataset loss weights, e.g. {interleaved: 1.0, pairs: 0.5}; every optimizer "
        "step accumulates gradients over train.grad_accum micro-batches taken from the datasets in turn",
    )
    max_images: int = Field(8, gt=0, description="interleaved documents: images kept per document")

    @model_validator(mode="after")
    def _stream_fields(self):
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"data.crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.format == "webdataset" and self.max_train_pairs is not None:
            raise ValueError("data.max_train_pairs applies to format karpathy; a webdataset stream has no length")
        return self


class TrainConfig(Strict):
    steps: int = Field(1000, gt=0, description="optimizer steps")
    batch_size: int = Field(
        128, gt=0, le=MAX_BATCH, description="pairs per micro-batch over all processes (under torchrun each takes N-th)"
    )
    grad_accum: int = Field(1, gt=0, le=MAX_ACCUM, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas, each in [0, 1)")
    eps: float = Field(1e-6, gt=0, description="AdamW epsilon")
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
    loggers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=lambda: ["tensorboard"],
        description="besides metrics.jsonl: TensorBoard events (RUN_DIR/tensorboard), Weights & Biases "
        "(pip install wandb; WANDB_PROJECT, WANDB_MODE=offline)",
    )
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a NaN/inf loss or gradient: stop the run (the last finite checkpoint is kept), or skip the "
        "update and count it (metrics: nonfinite_steps)",
    )

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"AdamW betas must each be in [0, 1), got {list(v)}")
        return v


class EvalConfig(Strict):
    batch_size: int = Field(256, gt=0, le=MAX_BATCH)


class RunConfig(Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED)
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
            for k, w in v.items():
                if isinstance(w, bool) or (isinstance(w, dict) and isinstance(w.get("weight"), bool)):
                    raise ValueError(f"objectives.{k}: give a weight (a number, e.g. 1.0), not {w!r}")
            return {k: {"weight": w} if isinstance(w, int | float) else w for k, w in v.items()}
        return v

    @model_validator(mode="after")
    def _objectives_fit(self):
        if not self.objectives:
            raise ValueError("objectives: at least one objective is needed (contrastive, mlm, caption, ...)")
        if all(oc.weight == 0 for oc in self.objectives.values()):
            raise ValueError("objectives: every weight is 0, so nothing would be trained")
        check_objective_options(self)
        arch = self.model.arch
        fam = family(arch)
        for name in self.objectives:
            if name not in fam.objectives:
                owners = [a for a, f in FAMILIES.items() if name in f.objectives]
                raise ValueError(
                    f"objectives.{name} needs model.arch {' or '.join(owners)}; "
                    f"model.arch {arch} trains with: {', '.join(sorted(fam.objectives))}"
                )
        needed = heads_for(self.objectives)
        if self.model.image.width not in (None, self.model.width) and {"itm", "mrm"} & set(needed):
            raise ValueError("model.image.width: the itm / mrm heads read both streams at one width (model.width)")
        if self.model.outputs is not None:
            missing = [h for h in needed if h not in self.model.outputs]
            if missing:
                raise ValueError(f"model.outputs lacks {missing}, needed by the objectives")
        if self.data.text_only and set(self.objectives) != {"mlm"}:
            raise ValueError(
                f"data.text_only trains on captions alone: objectives must be mlm only, got {sorted(self.objectives)}"
            )
        return self

    @model_validator(mode="after")
    def _data_fits(self):
        arch, data = self.model.arch, self.data
        fam = family(arch)
        if data.task == "vqa" and not fam.generative:
            generative = [a for a, f in FAMILIES.items() if f.generative]
            raise ValueError(f"data.task vqa trains a generative answer: model.arch must be one of {generative}")
        kind = fam.data(self)
        if data.mixture is not None:
            if kind != "documents":
                raise ValueError(
                    f"data.mixture: model.arch {arch} does not train on a mixture of datasets "
                    f"(families that train on interleaved documents do: {', '.join(_document_families(self))})"
                )
            if self.train.grad_accum % len(data.mixture):
                raise ValueError(
                    f"train.grad_accum {self.train.grad_accum} must be a multiple of the {len(data.mixture)} "
                    "datasets in data.mixture (each step takes micro-batches from every dataset in turn)"
                )
        uses_docs = kind == "documents" and (data.mixture is None or "interleaved" in data.mixture)
        if uses_docs and data.interleaved is None:
            raise ValueError(
                f"data.interleaved: model.arch {arch} trains on interleaved documents; give their directory"
            )
        return self


def _document_families(cfg: RunConfig) -> list[str]:
    found = []
    for name, f in FAMILIES.items():
        try:
            if f.data(cfg) == "documents":
                found.append(name)
        except AttributeError:  # a data function reading a section this config lacks
            pass
    return found
