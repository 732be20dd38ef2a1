"""Flamingo (Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning").

    images -> frozen vision encoder -> perceiver resampler (models/perceiver.py) -> media tokens
    text with <image> markers -> frozen causal LM whose layers are interleaved with GATED
    XATTN-DENSE blocks (layout `layouts.flamingo`) that cross-attend to the media tokens

Frozen: the vision encoder (the image tower of an mmtlab contrastive dual encoder), the LM's
token/position embeddings, layers and final norm (an mmtlab `lm` run, or a local Hugging Face
GPT-2: models/hf_lm.py). Trained: the resampler, the gated blocks and the embedding of the
`<image>` token (id = the LM's vocabulary size; the LM's own vocabulary and output layer are
unchanged). `<|endofchunk|>` is the LM's [SEP] (GPT-2's <|endoftext|>), the token it already ends a
text with, so generation stops where a chunk ends.

Media masking (the paper's "only attend to the immediately preceding image"): text token t
cross-attends only to the latents of the last <image> at or before t; before the first image it
sees none and its cross-attention output is exactly zero (layers.CrossAttention). The LM's
self-attention still sees all earlier text, so earlier images reach later text only through it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.common import ModelBase, init_weights, require_vocab, tied_lm_logits
from mmtlab.models.fusion import FusionEncoder, build_layout, modality_specific
from mmtlab.models.generate import generate
from mmtlab.models.layers import KVCache
from mmtlab.models.perceiver import PerceiverResampler
from mmtlab.models.text import TextEmbedding
from mmtlab.models.vision import PatchEmbedding


class VisionEncoder(nn.Module):
    """The image tower of a dual encoder (layout modality_specific, patch inputs), with that
    model's parameter names: its final-normed patch grid ([CLS] first) is Flamingo's visual input."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.layout != "modality_specific" or cfg.image.input != "patches":
            raise ValueError(
                f"flamingo.vision_run: a dual encoder with patch inputs is needed (layout modality_specific), "
                f"got layout {cfg.layout!r} with {cfg.image.input} inputs"
            )
        self.image_embed = PatchEmbedding(
            cfg.image.size, cfg.image.patch, cfg.width, cfg.image.channels, cls_token=True, stem=cfg.image.stem
        )
        self.encoder = FusionEncoder(
            modality_specific(cfg.depth, streams=("image",)), cfg.width, cfg.heads, cfg.mlp_ratio, gelu=cfg.gelu
        )
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, images: Tensor) -> Tensor:
        return self.norm(self.encoder({"image": self.image_embed(images)})["image"])

    @staticmethod
    def weights_from_dual_encoder(weights: dict[str, Tensor]) -> dict[str, Tensor]:
        """The image tower's tensors of a dual-encoder state dict, under this module's names."""
        out = {}
        for k, v in weights.items():
            if k.startswith("image_embed.") or k.startswith("encoder.layers.") and ".streams.image." in k:
                out[k] = v
            elif k.startswith("norm.image."):
                out["norm." + k.split(".", 2)[2]] = v
        return out


def media_mask(tokens: Tensor, media_id: int, slots: int, latents: int, seen: Tensor | None = None) -> Tensor:
    """Cross-attention mask [B, L, slots * latents]: token t sees the latents of the most recent
    <image> at or before it. `seen` [B]: images before `tokens` (incremental decoding)."""
    time = torch.cumsum(tokens == media_id, dim=1)
    if seen is not None:
        time = time + seen[:, None]
    slot = torch.arange(1, slots + 1, device=tokens.device).repeat_interleave(latents)
    return time[:, :, None] == slot[None, None, :]


class Flamingo(ModelBase):
    contrastive = None  # the training loop asks every family for these heads
    mlm = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        fc = cfg.flamingo
        vocab = require_vocab(cfg, "the LM's tokenizer")
        if fc.vision is None:
            raise ValueError(
                "model.flamingo.vision is not set (filled in from flamingo.vision_run when training starts)"
            )
        self.cfg = cfg
        d = cfg.width
        vision_cfg = ModelConfig.model_validate(fc.vision)
        self.vision = VisionEncoder(vision_cfg)
        self.resampler = PerceiverResampler(
            vision_cfg.width, d, cfg.heads, fc.latents, fc.resampler_depth, fc.max_frames, cfg.mlp_ratio
        )
        self.text_embed = TextEmbedding(vocab, d, cfg.text.max_len)
        self.media_embed = nn.Parameter(torch.randn(d) * 0.02)  # the <image> token (new: trained)
        self.layout = build_layout("flamingo", cfg.depth, cross_every=fc.cross_every)
        self.encoder = FusionEncoder(self.layout, d, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.gelu)
        self.norm = nn.LayerNorm(d)
        self.lm_layers = [i for i, s in enumerate(self.layout) if s.group == "lm"]
        init_weights(self, len(self.layout))
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(("cross_gate", "mlp_gate")):
                    p.fill_(fc.gate_init)
        for frozen in (self.vision, self.text_embed, self.norm):
            frozen.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()  # frozen: a conv stem's BatchNorm keeps the vision run's statistics
        return self

    @property
    def media_id(self) -> int:
        return self.cfg.text.vocab_size

    @property
    def image_size(self) -> int:
        return self.cfg.flamingo.vision["image"]["size"]

    # -- frozen parts ----------------------------------------------------------------------------

    def load_frozen(self, vision: dict[str, Tensor], lm: dict[str, Tensor]) -> int:
        """Copy the vision encoder's (a dual encoder's state dict) and the LM's (a CausalLM's) weights
        into their frozen places; returns the number of tensors copied. Every frozen tensor must come."""
        own = {f"vision.{k}": v for k, v in VisionEncoder.weights_from_dual_encoder(vision).items()}
        for k, v in lm.items():
            if k.startswith("encoder.layers."):
                i, rest = k[len("encoder.layers.") :].split(".", 1)
                if int(i) >= len(self.lm_layers):
                    raise ValueError(f"flamingo.lm_run: the LM has more layers than model.depth {self.cfg.depth}")
                own[f"encoder.layers.{self.lm_layers[int(i)]}.{rest}"] = v
            else:
                own[k] = v
        state = self.state_dict()
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        missing = sorted(frozen - own.keys())
        unknown = sorted(own.keys() - state.keys())
        bad = [
            f"{k} {tuple(v.shape)} vs {tuple(state[k].shape)}"
            for k, v in own.items()
            if k in state and v.shape != state[k].shape
        ]
        if missing or unknown or bad:
            raise ValueError(
                f"flamingo: the vision / LM runs do not fit this model (missing {missing[:3]}, unexpected "
                f"{unknown[:3]}, other shapes {bad[:3]})"
            )
        self.load_state_dict(own, strict=False)
        return len(own)

    def load_frozen_runs(self) -> int:
        """`load_frozen` from the latest checkpoints of flamingo.vision_run and flamingo.lm_run (or
        the Hugging Face model at flamingo.hf_lm)."""
        from mmtlab.models import hf_lm
        from mmtlab.rundir import run_weights

        fc = self.cfg.flamingo
        _, vision = run_weights(fc.vision_run, "model.flamingo.vision_run")
        lm = hf_lm.weights(fc.hf_lm) if fc.hf_lm else run_weights(fc.lm_run, "model.flamingo.lm_run")[1]
        return self.load_frozen(vision, lm)

    # -- forward -----------------------------------------------------------------------------------

    def media_tokens(self, images: Tensor, counts: Tensor) -> Tensor:
        """The resampled media of each document: images [N, 3, H, W] (or [N, T, 3, H, W] frames),
        the documents' images in order, `counts` [B] of them per document -> [B, M * latents, D]
        with M = the most images in a document; slots past a document's count are zero (and masked)."""
        frames = images if images.dim() == 5 else images[:, None]
        n, t = frames.shape[:2]
        with torch.no_grad():  # frozen: no activations kept for backward
            feats = self.vision(frames.flatten(0, 1))
        lat = self.resampler(feats.view(n, t, *feats.shape[1:]))  # [N, latents, D]
        b, m = counts.shape[0], int(counts.max()) if counts.numel() else 0
        doc = torch.repeat_interleave(torch.arange(b, device=counts.device), counts)
        first = torch.cumsum(counts, 0) - counts
        slot = torch.arange(n, device=counts.device) - first[doc]
        out = lat.new_zeros(b, max(m, 1), *lat.shape[1:])
        out = out.index_put((doc, slot), lat)
        return out.flatten(1, 2)

    def embed(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """Token + position embeddings; the <image> token gets its own (trained) embedding."""
        is_media = tokens == self.media_id
        h = self.text_embed.tok(tokens.masked_fill(is_media, 0))
        h = torch.where(is_media[..., None], self.media_embed.to(h.dtype), h)
        n = offset + tokens.shape[1]
        if n > self.text_embed.pos.shape[0]:
            raise ValueError(f"a sequence of {n} tokens is longer than the LM's max_len {self.text_embed.pos.shape[0]}")
        return h + self.text_embed.pos[offset:n]

    def lm_logits(self, states: Tensor) -> Tensor:
        return tied_lm_logits(states, self.norm, self.text_embed)

    def forward(self, tokens: Tensor, media: Tensor | None = None, seen: Tensor | None = None) -> Tensor:
        """Next-token logits [B, L, V] of `tokens` (with <image> markers) given `media_tokens(...)`.
        Without media the gated blocks are skipped: the frozen LM alone."""
        x = {"text": self.embed(tokens)}
        mask = None
        if media is not None:
            x["image"] = media
            mask = media_mask(
                tokens, self.media_id, media.shape[1] // self.cfg.flamingo.latents, self.cfg.flamingo.latents, seen
            )
        h = self.encoder(x, causal_text=True, cross_mask=mask)["text"]
        return self.lm_logits(h)

    def sequence_logits(self, batch) -> Tensor:
        """The caption objective's pass (objectives.StepContext.caption) over a DocumentBatch."""
        media = self.media_tokens(batch.images, batch.image_counts) if batch.images is not None else None
        return self(batch.tokens, media)

    # -- generation --------------------------------------------------------------------------------

    def decode(self, context: tuple[Tensor, Tensor], tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """A models/generate.py step. `context` = (media tokens [B, M * latents, D], images in the
        prompt [B]). The prompt goes in on the first call, so later tokens follow all its images."""
        media, n_images = context
        offset = 0 if cache is None else cache.length
        seen = n_images if offset > 0 else None
        mask = media_mask(
            tokens, self.media_id, media.shape[1] // self.cfg.flamingo.latents, self.cfg.flamingo.latents, seen
        )
        x = {"text": self.embed(tokens, offset), "image": media}
        h = self.encoder(x, causal_text=True, cross_mask=mask, cache=cache)["text"]
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.lm_logits(h)

    @torch.no_grad()
    def generate(self, prompt: Tensor, images: Tensor, counts: Tensor, *, max_new_tokens: int = 24, **kwargs) -> Tensor:
        """Continue prompts [B, P] (same length, no padding, with <image> markers) given their images
        (`media_tokens` arguments). kwargs: method, num_beams ... (models/generate.py)."""
        t = self.cfg.text
        max_new = min(max_new_tokens, t.max_len - prompt.shape[1])
        if max_new < 1:
            raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves no room under the LM's max_len {t.max_len}")
        if images is None or images.shape[0] == 0:
            media = self.media_embed.new_zeros(prompt.shape[0], self.cfg.flamingo.latents, self.cfg.width)
        else:
            media = self.media_tokens(images, counts)
        context = (media, (prompt == self.media_id).sum(1))
        return generate(
            self.decode, context, prompt, max_new_tokens=max_new, eos_id=t.sep_id, pad_id=t.pad_id, **kwargs
        )

    @torch.no_grad()
    def gate_values(self) -> dict[str, list[float]]:
        """tanh of each gate, by kind ("cross_gate", "mlp_gate"), in layer order: how far each
        gated block lets the images into the frozen LM (0: not at all)."""
        out: dict[str, list[float]] = {"cross_gate": [], "mlp_gate": []}
        for name, p in self.named_parameters():
            kind = name.rsplit(".", 1)[-1]
            if kind in out:
                out[kind] += torch.tanh(p.float()).flatten().tolist()
        return out

    @torch.no_grad()
    def close_gates(self) -> None:
        """Every tanh gate to 0: the frozen LM with the <image> embedding (the no-vision control)."""
        for name, p in self.named_parameters():
            if name.endswith(("cross_gate", "mlp_gate")):
                p.zero_()


def load_frozen_runs(model: Flamingo) -> int:
    """The registry's `load_pretrained` hook (mmtlab/families.py)."""
    return model.load_frozen_runs()


def with_frozen_parts(cfg):
    """A flamingo run config completed from its frozen parts' runs: the LM's width, depth, heads,
    MLP ratio, text settings and tokenizer, and the vision run's model config (so the run directory
    describes the whole model). The registry's `complete` hook (mmtlab/families.py)."""
    from mmtlab.config import ConfigError, load_config
    from mmtlab.families import family_of

    fc = cfg.model.flamingo

    def run_config(run: str, field: str):
        if not (Path(run) / "config.yaml").exists():
            raise ConfigError(f"model.flamingo.{field}: {run} is not a run directory (no config.yaml)")
        return load_config(Path(run) / "config.yaml")

    vision = run_config(fc.vision_run, "vision_run")
    if family_of(vision).passes != "encoder" or vision.model.layout != "modality_specific":
        raise ConfigError(f"model.flamingo.vision_run: {fc.vision_run} is not a dual encoder (modality_specific)")
    cfg = cfg.model_copy(deep=True)
    m = cfg.model
    if fc.hf_lm:
        from mmtlab.models import hf_lm

        try:
            f = hf_lm.model_fields(fc.hf_lm)
            tokenizer = hf_lm.tokenizer_path(fc.hf_lm)
        except (OSError, ValueError) as e:
            raise ConfigError(str(e)) from None
        m.width, m.depth, m.heads, m.mlp_ratio, m.gelu = f["width"], f["depth"], f["heads"], f["mlp_ratio"], f["gelu"]
        m.text = m.text.model_copy(update={"max_len": f["max_len"]})
    else:
        lm = run_config(fc.lm_run, "lm_run")
        if lm.model.layout != "lm":  # the causal LM family's own layout
            raise ConfigError(f"model.flamingo.lm_run: {fc.lm_run} is a {lm.model.arch} run, not a causal LM (arch lm)")
        m.width, m.depth, m.heads, m.mlp_ratio = lm.model.width, lm.model.depth, lm.model.heads, lm.model.mlp_ratio
        m.gelu = lm.model.gelu
        m.text = lm.model.text.model_copy()
        tokenizer = Path(fc.lm_run) / "tokenizer.json"
    m.flamingo.vision = vision.model.model_dump(mode="json")
    cfg.tokenizer.path = str(tokenizer)
    return cfg
