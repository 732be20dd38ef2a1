"""The encoder model: embeddings -> fusion encoder (a LayerSpec list) -> heads.

One class serves dual encoders, single-stream, asymmetric and co-attention models; what differs
is the layout (see fusion.py) and which output heads exist.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.fusion import FusionEncoder, build_layout
from mmtlab.models.heads import ContrastiveHead, MLMHead, pool
from mmtlab.models.text import TextEmbedding
from mmtlab.models.vision import PatchEmbedding


class MultimodalTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.text.vocab_size is None:
            raise ValueError("model.text.vocab_size is not set (it comes from the tokenizer)")
        self.cfg = cfg
        d = cfg.width
        self.text_embed = TextEmbedding(cfg.text.vocab_size, d, cfg.text.max_len)
        self.image_embed = PatchEmbedding(cfg.image.size, cfg.image.patch, d, cfg.image.channels, cls_token=True)
        self.layout = build_layout(cfg.layout, cfg.depth, **cfg.layout_args)
        self.encoder = FusionEncoder(self.layout, d, cfg.heads, cfg.mlp_ratio, cfg.dropout)
        self.norm = nn.ModuleDict({"text": nn.LayerNorm(d), "image": nn.LayerNorm(d)})
        outputs = cfg.outputs or []
        self.contrastive = (
            ContrastiveHead(d, cfg.embed_dim, init_bias=cfg.logit_bias) if "contrastive" in outputs else None
        )
        self.mlm = MLMHead(d, cfg.text.vocab_size) if "mlm" in outputs else None
        self.apply(_init_weights)
        # GPT-2 style: scale residual output projections by depth so the stream's variance stays flat.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight", "cross.proj.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * max(1, len(self.layout))))

    # -- encoders -----------------------------------------------------------------------------

    def forward(
        self,
        images: Tensor | None = None,
        tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        pos_box: tuple[float, float, float, float] | None = None,
    ) -> dict[str, Tensor]:
        """Joint forward of whatever modalities are given. Returns final-normed token states."""
        x, pad = {}, {}
        if tokens is not None:
            x["text"] = self.text_embed(tokens)
            pad["text"] = None if text_mask is None or bool(text_mask.all()) else text_mask
        if images is not None:
            x["image"] = self.image_embed(images, pos_box)
        if not x:
            raise ValueError("forward needs images, tokens or both")
        x = self.encoder(x, pad)
        return {m: self.norm[m](h) for m, h in x.items()}

    def _require(self, head: str):
        if getattr(self, head) is None:
            raise RuntimeError(f"this model has no {head} head (model.outputs = {self.cfg.outputs})")

    def encode_image(self, images: Tensor, pos_box=None) -> Tensor:
        """L2-normalised image embeddings [B, E] (models with a contrastive head); `pos_box`: CPE crops."""
        self._require("contrastive")
        h = self(images=images, pos_box=pos_box)["image"]
        return self.contrastive.embed_image(pool(h, None, self.cfg.pool))

    def encode_text(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """L2-normalised text embeddings [B, E] (models with a contrastive head)."""
        self._require("contrastive")
        h = self(tokens=tokens, text_mask=mask)["text"]
        return self.contrastive.embed_text(pool(h, mask, self.cfg.pool))

    def score(self, images: Tensor, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Matching logits [B] for the pairs (images[i], tokens[i]).

        Dual encoders: scaled cosine similarity. Cross-encoder (ITM) scoring comes with the ITM head.
        """
        self._require("contrastive")
        img, txt = self.encode_image(images), self.encode_text(tokens, mask)
        return self.contrastive.scale() * (img * txt).sum(-1)

    def mlm_logits(self, text_states: Tensor) -> Tensor:
        self._require("mlm")
        return self.mlm(text_states, self.text_embed.tok.weight)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=0.02)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
