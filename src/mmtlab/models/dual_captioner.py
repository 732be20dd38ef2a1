"""A dual encoder (CLIP) plus a separate captioning decoder: the baseline that MaMMUT and CoCa fold
into one text tower. A bidirectional text encoder ("text_encoder" layers) serves the contrastive
loss; a causal decoder with cross-attention ("decoder" layers) captions from the token embeddings.
They share only the ViT and the token embeddings (layout: `layouts.dual_captioner`)."""

from __future__ import annotations

from mmtlab.models.decoder import ImageTextDecoder


class DualEncoderCaptioner(ImageTextDecoder):
    contrastive_groups = ("text_encoder",)
    contrastive_causal = False
    text_pool = "mean"
    caption_groups = ("decoder",)
