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
    max_len: int = Field(32, gt=1, description="captions are truncated to this many tokens")
    vocab_size: int | None = Field(None, description="filled in from the tokenizer")
    pad_id: int = 0
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4


OutputHead = Literal["contrastive", "mlm", "mrm", "itm"]
# Families with a text decoder (models/decoder.py); each has a layout preset of the same name.
DECODER_ARCHS = ("mammut", "coca", "dual_captioner")
# Families that predict the next token: the decoders, a text-only causal LM and Flamingo (a frozen
# LM conditioned on interleaved images). Each has a layout preset of the same name.
GENERATIVE_ARCHS = (*DECODER_ARCHS, "lm", "flamingo")
Modality = Literal["image", "text", "speech"]


class SpeechConfig(Strict):
    """Raw 16 kHz waveform -> wav2vec 2.0-style convolutional feature encoder -> 20 ms frames."""

    sample_rate: int = Field(16000, gt=0)
    # wav2vec 2.0 / data2vec audio: [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2 (stride 320 =
    # 20 ms at 16 kHz); same kernels and strides here, with 64 channels instead of 512.
    conv_layers: list[tuple[int, int, int]] = Field(
        default_factory=lambda: [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2,
        description="feature encoder: (channels, kernel, stride) per conv layer",
    )
    # wav2vec 2.0: one grouped conv of 128 frames (2.56 s), 16 groups; our utterances are 0.5-4 s.
    conv_pos_kernel: int = Field(31, gt=0, description="convolutional positional embedding width in frames")
    conv_pos_groups: int = Field(8, gt=0)
    max_seconds: float = Field(4.0, gt=0, description="pretraining crops utterances to at most this long")


class Data2VecModalityConfig(Strict):
    """data2vec settings of one modality. Defaults differ per modality: see DATA2VEC_DEFAULTS."""

    mask_prob: float = Field(gt=0, lt=1, description="text: tokens chosen; image: patches masked; speech: p * span")
    mask_length: int | None = Field(
        None, ge=1, description="image: min patches per masked block (null: 16/196 of the grid); speech: span frames"
    )
    top_k: int | None = Field(None, ge=1, description="teacher blocks averaged into targets (null: per-modality share)")
    target_layer: Literal["ffn", "block"] = Field(
        description="ffn: each block's FFN output before the residual add; block: the residual stream after it"
    )
    layer_norm: Literal["instance", "layer", "none"] = Field(description="normalisation of each block's output")
    target_norm: Literal["instance", "layer", "none"] = Field(description="normalisation of their average")
    loss_beta: float = Field(ge=0, description="smooth-L1 beta; 0 = L2")
    loss_scale: float | None = Field(None, gt=0, description="per-token loss scale; null: 1/sqrt(width)")
    decoder_layers: int = Field(ge=1, description="data2vec 2.0 conv decoder depth (efficient mode)")
    decoder_kernel: int = Field(ge=1)
    decoder_groups: int = Field(ge=1)


# data2vec defaults per modality -- the one place they are set. Sources are the paper (Baevski et al.
# 2022, arXiv:2202.03555) and facebookresearch/fairseq examples/data2vec: v1 configs
# text/pretraining/base.yaml, vision/pretraining/base_imagenet_d2v1.yaml, audio/pretraining/
# base_librispeech.yaml and models/data2vec_{text,vision,audio}.py; data2vec 2.0 (arXiv:2212.07525)
# configs v2/base_{text,images,audio}_only_task.yaml.
DATA2VEC_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": dict(
        mask_prob=0.15,  # paper: BERT masking, 15% of tokens, 80% [MASK] / 10% random / 10% unchanged
        mask_length=1,
        top_k_share=10 / 12,  # text base.yaml: average_top_k_layers 10 of 12
        target_layer="ffn",  # data2vec_text.py: encoder "fc_results" = FFN output before the residual (post-LN)
        layer_norm="layer",  # text base.yaml: layer_norm_target_layer
        target_norm="none",
        loss_beta=4.0,  # text base.yaml: loss_beta 4
        loss_scale=1.0,  # text base.yaml: loss_scale 1
        # v2 text: decoder_layers 5, decoder_kernel 9, decoder_groups 1
        decoder_layers=5,
        decoder_kernel=9,
        decoder_groups=1,
    ),
    "image": dict(
        mask_prob=0.6,  # paper: 60% of patches, BEiT block-wise masking
        mask_length=None,  # data2vec_vision.py: min_mask_patches_per_block 16 (of 14x14); scaled to our grid
        top_k_share=6 / 12,  # base_imagenet_d2v1.yaml: average_top_k_layers 6 of 12
        target_layer="block",  # data2vec_vision.py: end_of_block_targets (pre-LN BEiT blocks)
        layer_norm="instance",  # v2 images: instance_norm_target_layer
        target_norm="layer",  # base_imagenet_d2v1.yaml and v2 images: layer_norm_targets
        loss_beta=2.0,  # base_imagenet_d2v1.yaml: loss_beta 2
        loss_scale=None,  # data2vec_vision.py: 1/sqrt(embed_dim)
        # v2 images: 6 decoder layers of 3x3 convs in 16 groups
        decoder_layers=6,
        decoder_kernel=3,
        decoder_groups=16,
    ),
    "speech": dict(
        mask_prob=0.65,  # paper: p = 0.065 of frames start a span of 10 (fairseq's mask_prob 0.65 = p * 10)
        mask_length=10,
        top_k_share=8 / 12,  # base_librispeech.yaml: average_top_k_layers 8 of 12
        target_layer="ffn",  # data2vec_audio.py: layer_results[2] = FFN output before the residual
        layer_norm="instance",  # base_librispeech.yaml: instance_norm_target_layer
        target_norm="none",
        loss_beta=0.0,  # base_librispeech.yaml: loss_beta 0 (L2)
        loss_scale=None,  # data2vec_audio.py: 1/sqrt(dim)
        # v2 audio: 4 decoder layers, kernel 7, 16 groups
        decoder_layers=4,
        decoder_kernel=7,
        decoder_groups=16,
    ),
}


class Data2VecConfig(Strict):
    """data2vec (teacher-student) settings; the student is this model, the teacher an EMA of its blocks."""

    modalities: list[Modality] = Field(default_factory=lambda: ["image"], min_length=1)
    # Paper / every v1 config: tau_0 = 0.999 -> tau_e = 0.9999, linear over ema_anneal_end_step updates.
    # That is a 1,000-10,000-step time constant: runs of a few hundred steps want smaller values.
    ema_decay: float = Field(0.999, ge=0, le=1, description="teacher EMA decay at the start (tau_0)")
    ema_end_decay: float = Field(0.9999, ge=0, le=1, description="decay after annealing (tau_e)")
    ema_anneal_steps: int | None = Field(
        None, ge=0, description="linear tau_0 -> tau_e over N updates; null: train.steps"
    )
    efficient: bool = Field(False, description="data2vec 2.0: the student encodes only unmasked tokens + conv decoder")
    masks_per_sample: int = Field(
        1, ge=1, description="data2vec 2.0 clone_batch: masks per sample sharing one teacher pass"
    )
    mask_noise_std: float = Field(0.01, ge=0, description="data2vec 2.0: decoder input at masked positions ~ N(0, std)")
    text: Data2VecModalityConfig
    image: Data2VecModalityConfig
    speech: Data2VecModalityConfig

    @model_validator(mode="before")
    @classmethod
    def _modality_defaults(cls, data):
        if isinstance(data, dict):
            data = dict(data)
            for m, defaults in DATA2VEC_DEFAULTS.items():
                given = data.get(m) or {}
                if isinstance(given, dict):  # (already-built sections pass through untouched)
                    base = {k: v for k, v in defaults.items() if k != "top_k_share"}
                    data[m] = {**base, **given}
        return data

    @model_validator(mode="after")
    def _check(self):
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"data2vec.modalities has duplicates: {self.modalities}")
        if "speech" in self.modalities and len(self.modalities) > 1:
            raise ValueError("data2vec.modalities: speech is trained on its own (spoken captions have no images)")
        return self


class FlamingoConfig(Strict):
    """Flamingo: a frozen vision encoder and a frozen causal LM from earlier mmtlab runs, joined by
    a perceiver resampler and gated cross-attention blocks (the only trained parts)."""

    vision_run: str = Field(description="run dir of a contrastive dual encoder (modality_specific, patches)")
    lm_run: str | None = Field(None, description="run dir of a causal LM (model.arch: lm); its tokenizer is used")
    hf_lm: str | None = Field(
        None, description="instead of lm_run: a local Hugging Face GPT-2 dir (config.json, safetensors, tokenizer.json)"
    )
    latents: int = Field(64, gt=0, description="perceiver resampler: learned latents (media tokens per image)")
    resampler_depth: int = Field(2, gt=0, description="perceiver resampler: layers")
    max_frames: int = Field(8, gt=0, description="perceiver resampler: learned time embeddings (video frames)")
    cross_every: int = Field(1, gt=0, description="a gated cross-attention block before every N-th LM layer")
    gate_init: float = Field(
        0.0,
        description="initial value of every tanh gate; 0 (the paper) starts at the frozen LM exactly, but the "
        "gated blocks' updates then move the output by only ~tanh(gate) * lr and short runs leave them closed",
    )
    vision: dict[str, Any] | None = Field(None, description="the vision run's model config (filled in at training)")

    @model_validator(mode="after")
    def _one_lm(self):
        if (self.lm_run is None) == (self.hf_lm is None):
            raise ValueError("model.flamingo: set exactly one of lm_run (an mmtlab LM run) and hf_lm (a local HF LM)")
        return self


class ModelConfig(Strict):
    arch: Literal["encoder", "mammut", "coca", "dual_captioner", "data2vec", "lm", "flamingo"] = Field(
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
        "lm",
        "flamingo",
    ] = Field("modality_specific", description="attention layout preset; decoder families: the arch's own")
    layout_args: dict[str, Any] = Field(default_factory=dict, description="extra preset arguments, e.g. {k: 2}")
    width: int = Field(128, gt=0)
    depth: int = Field(4, ge=0)
    heads: int = Field(4, gt=0, description="attention heads")
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    gelu: Literal["exact", "tanh"] = Field("exact", description="the MLPs' GELU: exact (erf) or tanh (GPT-2's)")
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
    speech: SpeechConfig | None = Field(None, description="speech front end (data2vec speech models)")
    data2vec: Data2VecConfig | None = Field(None, description="teacher-student settings (arch: data2vec)")
    flamingo: FlamingoConfig | None = Field(None, description="frozen parts and new modules (arch: flamingo)")

    @model_validator(mode="before")
    @classmethod
    def _layout_of_family(cls, data):
        if isinstance(data, dict) and data.get("arch") in GENERATIVE_ARCHS and "layout" not in data:
            data = {**data, "layout": data["arch"]}
        return data

    @model_validator(mode="after")
    def _family_layout(self):
        if self.arch in GENERATIVE_ARCHS and self.layout != self.arch:
            raise ValueError(f"layout {self.layout!r} does not fit arch {self.arch!r} (use layout: {self.arch})")
        if self.arch == "encoder" and self.layout in GENERATIVE_ARCHS:
            raise ValueError(f"layout {self.layout!r} needs arch: {self.layout}")
        if (self.arch == "flamingo") != (self.flamingo is not None):
            raise ValueError("flamingo: the section is required by, and only used with, model.arch: flamingo")
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

    @model_validator(mode="before")
    @classmethod
    def _data2vec_sections(cls, data):
        # Filled in before validation: assigning fields in an "after" validator re-enters it.
        if isinstance(data, dict) and data.get("arch") == "data2vec":
            data = {**data, "data2vec": data.get("data2vec") or {}}
            mods = data["data2vec"].get("modalities", []) if isinstance(data["data2vec"], dict) else []
            if "speech" in (mods or []) and data.get("speech") is None:
                data["speech"] = {}
        return data

    @model_validator(mode="after")
    def _data2vec(self):
        if self.arch != "data2vec":
            if self.data2vec is not None:
                raise ValueError("data2vec: only used with model.arch: data2vec")
            return self
        if self.layout != "modality_specific":
            raise ValueError("layout: a data2vec model is modality_specific (one stream per modality)")
        d = self.data2vec
        if "speech" in d.modalities and self.speech is None:
            raise ValueError("speech: a speech model needs the speech section")
        for m in d.modalities:
            mc: Data2VecModalityConfig = getattr(d, m)
            if mc.top_k is None:
                mc.top_k = max(1, round(DATA2VEC_DEFAULTS[m]["top_k_share"] * self.depth))
            if mc.top_k > self.depth:
                raise ValueError(f"data2vec.{m}.top_k {mc.top_k} exceeds depth {self.depth}")
            if m == "image" and mc.mask_length is None:
                patches = (self.image.size // self.image.patch) ** 2
                mc.mask_length = max(1, round(16 * patches / 196))
            if d.efficient and self.width % mc.decoder_groups:
                raise ValueError(f"data2vec.{m}.decoder_groups {mc.decoder_groups} must divide width {self.width}")
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
    "data2vec",
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
        decoder = self.model.arch in GENERATIVE_ARCHS
        if "caption" in self.objectives and not decoder:
            raise ValueError(
                f"objectives.caption needs a text decoder: model.arch one of {', '.join(GENERATIVE_ARCHS)}"
            )
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

    @model_validator(mode="after")
    def _text_only_objectives(self):
        if self.data.text_only and set(self.objectives) != {"mlm"}:
            raise ValueError(
                f"data.text_only trains on captions alone: objectives must be mlm only, got {sorted(self.objectives)}"
            )
        return self

    @model_validator(mode="after")
    def _sequence_models(self):
        arch, data = self.model.arch, self.data
        if arch in ("lm", "flamingo") and set(self.objectives) != {"caption"}:
            raise ValueError(f"objectives: model.arch {arch} trains with caption (next-token) only")
        if data.mixture is not None:
            if arch != "flamingo":
                raise ValueError("data.mixture: only model.arch flamingo trains on a mixture of datasets")
            if self.train.grad_accum % len(data.mixture):
                raise ValueError(
                    f"train.grad_accum {self.train.grad_accum} must be a multiple of the {len(data.mixture)} "
                    "datasets in data.mixture (each step takes micro-batches from every dataset in turn)"
                )
        uses_docs = arch == "flamingo" and (data.mixture is None or "interleaved" in data.mixture)
        if uses_docs and data.interleaved is None:
            raise ValueError("data.interleaved: flamingo trains on interleaved documents; give their directory")
        return self

    @model_validator(mode="after")
    def _data2vec_objective(self):
        is_d2v = self.model.arch == "data2vec"
        if is_d2v and set(self.objectives) != {"data2vec"}:
            raise ValueError(f"objectives: a data2vec model trains with data2vec only, got {sorted(self.objectives)}")
        if not is_d2v and "data2vec" in self.objectives:
            raise ValueError("objectives.data2vec needs model.arch: data2vec (the student with its EMA teacher)")
        if is_d2v and self.model.data2vec.ema_anneal_steps is None:
            self.model.data2vec.ema_anneal_steps = self.train.steps
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
