"""Image-text decoder families: a ViT and a text decoder built from LayerSpec groups, trained with a
contrastive pass and a generative (captioning) pass.

MaMMUT, CoCa and a dual encoder + captioner share everything here; a family only says which layer
groups of its layout (layouts.py presets) each pass runs and how:

    family           contrastive pass                          generative pass
    mammut           "text" layers, bidirectional, no x-attn   the same "text" layers, causal, x-attn on
    coca             "unimodal" layers, causal                 continues into "multimodal" layers (x-attn)
    dual_captioner   "text_encoder" layers, bidirectional      separate "decoder" layers, causal, x-attn

Right padding and causal self-attention mean real tokens never see padding, so causal passes run
without a padding mask (SDPA's fast causal path); the losses ignore padded positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.common import ModelBase, init_weights, require_vocab, tied_lm_logits
from mmtlab.models.fusion import FusionEncoder, build_layout
from mmtlab.models.generate import generate
from mmtlab.models.heads import ContrastiveHead, pool
from mmtlab.models.layers import KVCache
from mmtlab.models.text import TextEmbedding
from mmtlab.models.video import VideoEmbedding
from mmtlab.models.vision import PatchEmbedding


class ImageTextDecoder(ModelBase):
    # Set by each family (see the table above).
    contrastive_groups: tuple[str, ...] = ()
    contrastive_causal: bool = False
    text_pool: str = "mean"  # "mean" over real tokens, or "last" real token (causal passes)
    caption_groups: tuple[str, ...] = ()
    caption_continues_contrastive: bool = False  # CoCa: the captioner starts from the contrastive pass's states

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vocab = require_vocab(cfg)
        self.cfg = cfg
        d = cfg.width
        self.text_embed = TextEmbedding(vocab, d, cfg.text.max_len)
        self.image_embed = PatchEmbedding(
            cfg.image.size,
            cfg.image.patch,
            d,
            cfg.image.channels,
            cls_token=self.image_cls_token(cfg),
            stem=cfg.image.stem,
        )
        self.layout = build_layout(cfg.layout, cfg.depth, **cfg.layout_args)
        self.encoder = FusionEncoder(self.layout, d, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.gelu)
        self.vision_layers = self.group_slice(("vision",))
        self.contrastive_layers = self.group_slice(self.contrastive_groups)
        self.caption_layers = self.group_slice(self.caption_groups)
        # One final norm per output: image tokens, contrastive text states, caption states.
        self.norm = nn.ModuleDict({"image": nn.LayerNorm(d), "text": nn.LayerNorm(d), "caption": nn.LayerNorm(d)})
        outputs = cfg.outputs or []
        self.contrastive = (
            ContrastiveHead(d, cfg.embed_dim, init_bias=cfg.logit_bias) if "contrastive" in outputs else None
        )
        self.mlm = None  # encoder-family head; decoders caption instead
        self.build_extra(cfg)
        # Video clips [B, T, C, H, W] become tokens for the same vision layers (models/video.py).
        # Registered last, so the other weights are drawn as in the image model with the same seed.
        self.video_embed = VideoEmbedding(cfg.video, d, cfg.image.channels) if cfg.video else None
        init_weights(self, len(self.layout))

    # -- hooks for families ----------------------------------------------------------------------

    def image_cls_token(self, cfg: ModelConfig) -> bool:
        return cfg.pool == "cls"

    def build_extra(self, cfg: ModelConfig) -> None:
        """Family-specific modules (CoCa's attention poolers)."""

    def pool_image(self, tokens: Tensor) -> Tensor:
        return pool(tokens, None, self.cfg.pool)

    def caption_context(self, image_tokens: Tensor) -> Tensor:
        """What the decoder's cross-attention reads (CoCa: attention-pooled queries)."""
        return image_tokens

    # -- layout ------------------------------------------------------------------------------------

    def group_slice(self, groups: tuple[str, ...]) -> slice:
        idx = [i for i, s in enumerate(self.layout) if s.group in groups]
        if not idx or idx != list(range(idx[0], idx[-1] + 1)):
            raise ValueError(f"layout {self.cfg.layout!r}: layer groups {groups} must exist and be contiguous")
        return slice(idx[0], idx[-1] + 1)

    # -- image -------------------------------------------------------------------------------------

    def visual_embed(self, images: Tensor, pos_box=None) -> Tensor:
        """Input tokens of the ViT: patches of images [B, C, H, W], or tubes + frames of clips [B, T, C, H, W]."""
        if images.dim() == 5:
            if self.video_embed is None:
                raise ValueError("this model reads images; set model.video to give it a video encoder")
            return self.video_embed(images, self.image_embed)
        return self.image_embed(images, pos_box)

    def image_tokens(self, images: Tensor, pos_box=None) -> Tensor:
        """The ViT's final-normed tokens [B, N, D], shared by both passes; `pos_box`: CPE crops.
        Clips [B, T, C, H, W] run through the same layers (the model's video encoder)."""
        x = self.encoder({"image": self.visual_embed(images, pos_box)}, layers=self.vision_layers)
        return self.norm["image"](x["image"])

    def embed_image(self, image_tokens: Tensor) -> Tensor:
        self._require_contrastive()
        return self.contrastive.embed_image(self.pool_image(image_tokens))

    def encode_image(self, images: Tensor, pos_box=None) -> Tensor:
        """L2-normalised image embeddings [B, E]."""
        return self.embed_image(self.image_tokens(images, pos_box))

    # -- contrastive pass --------------------------------------------------------------------------

    def text_features(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """The contrastive pass: text states [B, L, D] before the final norm. Cross-attention is off,
        so these never depend on an image."""
        pad = None if self.contrastive_causal or mask is None or bool(mask.all()) else mask
        x = self.encoder(
            {"text": self.text_embed(tokens)},
            {"text": pad},
            causal_text=self.contrastive_causal,
            cross_attention=False,
            layers=self.contrastive_layers,
        )
        return x["text"]

    def embed_text(self, features: Tensor, mask: Tensor | None = None) -> Tensor:
        self._require_contrastive()
        h = self.norm["text"](features)
        if self.text_pool == "last":  # under causal attention the last real token has seen them all
            last = (mask.sum(1) - 1) if mask is not None else torch.full((h.shape[0],), h.shape[1] - 1)
            pooled = h[torch.arange(h.shape[0], device=h.device), last.to(h.device)]
        else:
            pooled = pool(h, mask, "mean")
        return self.contrastive.embed_text(pooled)

    def encode_text(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """L2-normalised text embeddings [B, E] from the contrastive pass."""
        return self.embed_text(self.text_features(tokens, mask), mask)

    def score(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Matching logits [B] of the pairs (images[i], tokens[i]): scale * cosine (+ bias)."""
        img, txt = self.encode_image(images), self.encode_text(tokens, mask)
        logits = self.contrastive.scale() * (img * txt).sum(-1)
        return logits if self.contrastive.logit_bias is None else logits + self.contrastive.logit_bias

    # -- generative pass ---------------------------------------------------------------------------

    def lm_logits(self, states: Tensor) -> Tensor:
        return tied_lm_logits(states, self.norm["caption"], self.text_embed)

    def caption_logits(self, image_tokens: Tensor, tokens: Tensor, text_features: Tensor | None = None) -> Tensor:
        """The generative pass: next-token logits [B, L, V] (position t predicts token t + 1).
        `text_features`: the contrastive pass's states, reused by families whose captioner
        continues from them (CoCa); ignored by the others."""
        context = self.caption_context(image_tokens)
        if self.caption_continues_contrastive and text_features is not None:
            h, layers = text_features, slice(self.contrastive_layers.stop, self.caption_layers.stop)
        else:
            h, layers = self.text_embed(tokens), self.caption_layers
        h = self.encoder({"text": h, "image": context}, causal_text=True, layers=layers)["text"]
        return self.lm_logits(h)

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Caption logits [B, L, V] of `tokens` given `images`."""
        return self.caption_logits(self.image_tokens(images), tokens)

    # -- generation --------------------------------------------------------------------------------

    def decode(self, context: Tensor, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """One decoding step for models/generate.py: logits [B, n, V] for `tokens` [B, n]. Without a
        cache `tokens` is the whole prefix; with one, only the new tokens (the cache is extended)."""
        offset = 0 if cache is None else cache.length
        h = self.text_embed(tokens, offset)
        h = self.encoder({"text": h, "image": context}, causal_text=True, layers=self.caption_layers, cache=cache)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.lm_logits(h["text"])

    @torch.no_grad()
    def generate(
        self, images: Tensor, prompt: Tensor | None = None, *, max_new_tokens: int | None = None, **kwargs
    ) -> Tensor:
        """Token ids [B, P + T]: the prompt (default: one [CLS] per image) and its continuation,
        [PAD] after [SEP]. kwargs: method ("greedy" | "beam" | "nucleus"), num_beams, top_p,
        temperature, generator, use_cache, length_penalty (see models/generate.py)."""
        t = self.cfg.text
        if prompt is None:
            prompt = torch.full((images.shape[0], 1), t.cls_id, dtype=torch.long, device=images.device)
        room = t.max_len - prompt.shape[1]
        max_new = room if max_new_tokens is None else min(max_new_tokens, room)
        if max_new < 1:
            raise ValueError(f"a prompt of {prompt.shape[1]} tokens leaves no room under text.max_len {t.max_len}")
        context = self.caption_context(self.image_tokens(images))
        return generate(
            self.decode, context, prompt, max_new_tokens=max_new, eos_id=t.sep_id, pad_id=t.pad_id, **kwargs
        )

    # -- misc --------------------------------------------------------------------------------------

    def _require_contrastive(self):
        if self.contrastive is None:
            raise RuntimeError(f"this model has no contrastive head (model.outputs = {self.cfg.outputs})")
