"""MaMMUT (Kuo et al. 2023, "MaMMUT: A Simple Architecture for Joint Learning for MultiModal Tasks").

A ViT and ONE text decoder, trained in two passes over the same weights every step:
- contrastive pass: bidirectional text self-attention, cross-attention switched off (the text
  cannot see the image), states mean-pooled and matched against the pooled image tokens;
- generative pass: causal self-attention and cross-attention to the image tokens in the layers
  the layout gives it (every second one by default), next-token captioning loss.
The layout (which layers cross-attend) is `layouts.mammut`; the passes are objectives/StepContext's
`embeddings` and `caption`, run in a shuffled order with one backward.
"""

from __future__ import annotations

from mmtlab.models.decoder import ImageTextDecoder


class MaMMUT(ImageTextDecoder):
    contrastive_groups = ("text",)
    contrastive_causal = False
    text_pool = "mean"
    caption_groups = ("text",)
