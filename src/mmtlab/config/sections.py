"""Config sections of the families that have settings of their own: speech front end, data2vec
(teacher-student, per-modality defaults) and Flamingo (frozen parts)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from mmtlab.config.base import Strict

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


class TubeConfig(Strict):
    """One TubeViT tube shape: a Conv3d of `kernel` (t, h, w) applied at `stride` from `offset`."""

    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    offset: tuple[int, int, int] = (0, 0, 0)

    @model_validator(mode="after")
    def _positive(self) -> TubeConfig:
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.offset) < 0:
            raise ValueError(f"tube kernel/stride must be >= 1 and offset >= 0, got {self.model_dump()}")
        return self


# TubeViT's four shapes (Piergiovanni et al. 2023, Sec. 3.2: 8x8x8 / 16x4x4 / 4x12x12 tubes and the
# 1x16x16 image patches) scaled to 8-frame 64 px clips; the image patches are `frame_stride` below.
DEFAULT_TUBES = [
    {"kernel": (4, 8, 8), "stride": (4, 16, 16)},
    {"kernel": (8, 4, 4), "stride": (8, 16, 16), "offset": (0, 4, 4)},
    {"kernel": (2, 12, 12), "stride": (4, 24, 24), "offset": (1, 8, 8)},
]


class VideoConfig(Strict):
    """MaMMUT's video encoder (TubeViT idea): sparse tubes + the image patches of every
    `frame_stride`-th frame, all tokens through the one shared ViT (models/video.py)."""

    frames: int = Field(8, gt=0, description="frames the model reads per clip")
    frame_stride: int | None = Field(4, gt=0, description="2D image patches of every N-th frame (null: none)")
    frame_start: int = Field(
        0, ge=0, description="first frame given image patches (the middle one: a 1-frame baseline)"
    )
    tubes: list[TubeConfig] = Field(default_factory=lambda: [TubeConfig(**t) for t in DEFAULT_TUBES])
    fixed_pos: bool = Field(True, description="fixed 3D sine-cosine position embeddings on the tubes")
    gate: bool = Field(True, description="learned gated connection from the ViT's learned 2D positions into the tubes")

    @model_validator(mode="after")
    def _some_tokens(self) -> VideoConfig:
        if not self.tubes and self.frame_stride is None:
            raise ValueError("model.video: needs tubes or a frame_stride (no tokens otherwise)")
        return self
