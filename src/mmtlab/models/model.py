"""The encoder model: embeddings -> fusion encoder (a LayerSpec list) -> heads.

One class serves dual encoders, single-stream, asymmetric and co-attention models; what differs
is the layout (see layouts.py) and which output heads exist.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from mmtlab.batches import Regions
from mmtlab.config import ModelConfig
from mmtlab.models.common import ModelBase, init_weights, require_vocab
from mmtlab.models.fusion import FusionEncoder, build_layout, unimodal_prefix
from mmtlab.models.heads import ContrastiveHead, ITMHead, MLMHead, MRMHead, pool
from mmtlab.models.regions import RegionEmbedding
from mmtlab.models.text import TextEmbedding
from mmtlab.models.vision import PatchEmbedding

Images = Tensor | Regions  # pixels [B, 3, H, W] in [-1, 1], or detector regions


class MultimodalTransformer(ModelBase):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vocab = require_vocab(cfg)
        self.cfg = cfg
        d, img = cfg.width, cfg.image
        di = img.width or d  # the image tower's own width (CLIP's ViT), where given
        eps = cfg.norm_eps or 1e-5  # PyTorch's default; BERT's and HF ViT's: 1e-12
        self.text_embed = TextEmbedding(vocab, d, cfg.text.max_len, norm=cfg.text.embed_norm, eps=eps)
        if img.input == "regions":
            if img.region_dim is None:
                raise ValueError("model.image.region_dim is not set (it comes from the detector)")
            self.image_embed = RegionEmbedding(img.region_dim, di)
        else:
            self.image_embed = PatchEmbedding(img.size, img.patch, di, img.channels, cls_token=True, stem=img.stem)
        # CLIP's ViT normalises its input tokens (`pre_layrnorm`); absent by default.
        self.image_pre_norm = nn.LayerNorm(di, eps=eps) if img.pre_norm else None
        self.layout = build_layout(cfg.layout, cfg.depth, **cfg.layout_args)
        if cfg.text.causal:  # CLIP's text tower: every layer's text queries see only earlier text
            self.layout = [replace(s, causal_text=True) for s in self.layout]
        self.text_pool = cfg.text.pool or cfg.pool
        own = (img.width, img.heads, img.mlp_ratio) != (None, None, None)
        sizes = {"image": (di, img.heads or cfg.heads, img.mlp_ratio or cfg.mlp_ratio)} if own else None
        self.encoder = FusionEncoder(
            self.layout, d, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.gelu, sizes, eps, cfg.post_norm
        )
        # Final LayerNorms of pre-LN blocks; post-LN blocks (BERT) end normalised, so they have none.
        norms = {} if cfg.post_norm else {"text": nn.LayerNorm(d, eps=eps), "image": nn.LayerNorm(di, eps=eps)}
        self.norm = nn.ModuleDict(norms)
        outputs = cfg.outputs or []
        if di != d and {"itm", "mrm"} & set(outputs):
            raise ValueError(f"the itm / mrm heads read both streams at one width; model.image.width is {di}, not {d}")
        self.contrastive = (
            ContrastiveHead(d, cfg.embed_dim, init_bias=cfg.logit_bias, image_dim=di)
            if "contrastive" in outputs
            else None
        )
        self.mlm = MLMHead(d, cfg.text.vocab_size, eps) if "mlm" in outputs else None
        self.itm = ITMHead(d) if "itm" in outputs else None
        self.mrm = None
        if "mrm" in outputs:
            if cfg.image.input != "regions" or cfg.image.region_classes is None:
                raise ValueError("the mrm head needs region inputs with model.image.region_classes set")
            self.mrm = MRMHead(d, cfg.image.region_classes, cfg.image.region_dim)
        init_weights(self, len(self.layout))

    # -- encoders -----------------------------------------------------------------------------

    def embed_text(self, tokens: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Text tokens [B, L, D] before the encoder and their key mask (None: no padding)."""
        return self.text_embed(tokens), None if text_mask is None or bool(text_mask.all()) else text_mask

    def embed_image(
        self, images: Images, pos_box: tuple[float, float, float, float] | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Image tokens [B, N, D] before the encoder (first token: [CLS] / the global [IMG] region)
        and their key mask (None: no padding)."""
        if isinstance(images, Regions):
            if self.cfg.image.input != "regions":
                raise ValueError("this model reads pixels (model.image.input: patches), not regions")
            return self.image_embed(images)
        if self.cfg.image.input == "regions":
            raise ValueError("this model reads detector regions (model.image.input: regions), not pixels")
        x = self.image_embed(images, pos_box)
        return (x if self.image_pre_norm is None else self.image_pre_norm(x)), None

    def forward(
        self,
        images: Images | None = None,
        tokens: Tensor | None = None,
        text_mask: Tensor | None = None,
        *,
        pos_box: tuple[float, float, float, float] | None = None,
    ) -> dict[str, Tensor]:
        """Joint forward of whatever modalities are given. Returns final-normed token states."""
        x, pad = {}, {}
        if tokens is not None:
            x["text"], pad["text"] = self.embed_text(tokens, text_mask)
        if images is not None:
            x["image"], pad["image"] = self.embed_image(images, pos_box)
        if not x:
            raise ValueError("forward needs images, tokens or both")
        x = self.encoder(x, pad)
        return {m: self.final_norm(m, h) for m, h in x.items()}

    def final_norm(self, stream: str, h: Tensor) -> Tensor:
        """A stream's states after the last layer: its final LayerNorm (none after post-LN blocks)."""
        return self.norm[stream](h) if stream in self.norm else h

    def image_key_mask(self, images: Images) -> Tensor | None:
        """[B, N] True for real image tokens (regions may be padded), None when all are real."""
        if not isinstance(images, Regions) or bool(images.mask.all()):
            return None
        return torch.cat([images.mask.new_ones(len(images), 1), images.mask], dim=1)

    def _require(self, head: str):
        if getattr(self, head) is None:
            raise RuntimeError(f"this model has no {head} head (model.outputs = {self.cfg.outputs})")

    def image_tokens(self, images: Images, pos_box=None) -> Tensor:
        """The image stream's final-normed tokens [B, N, D] on their own (first: [CLS]), as the
        decoder families' `image_tokens` (detection reads the patch tokens)."""
        return self(images=images, pos_box=pos_box)["image"]

    def encode_image(self, images: Tensor, pos_box=None) -> Tensor:
        """L2-normalised image embeddings [B, E] (models with a contrastive head); `pos_box`: CPE crops."""
        self._require("contrastive")
        h = self(images=images, pos_box=pos_box)["image"]
        return self.contrastive.embed_image(pool(h, self.image_key_mask(images), self.cfg.pool))

    def encode_text(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """L2-normalised text embeddings [B, E] (models with a contrastive head)."""
        self._require("contrastive")
        h = self(tokens=tokens, text_mask=mask)["text"]
        return self.contrastive.embed_text(pool(h, mask, self.text_pool))

    def score(self, images: Images, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """Matching logits [B] for the pairs (images[i], tokens[i]).

        Models with an ITM head: the cross-encoder's image-text-matching logit of the joint
        forward. Otherwise (dual encoders): the scaled cosine similarity of the embeddings.
        """
        if self.itm is not None:
            states = self(images=images, tokens=tokens, text_mask=mask)
            return self.itm_logits(states["text"], states["image"], mask, self.image_key_mask(images))
        self._require("contrastive")
        img, txt = self.encode_image(images), self.encode_text(tokens, mask)
        return self.contrastive.scale() * (img * txt).sum(-1)

    def itm_logits(
        self, text_states: Tensor, image_states: Tensor, text_mask: Tensor | None, image_mask: Tensor | None = None
    ) -> Tensor:
        """ITM logits [B] from final (normed) joint states of B pairs."""
        self._require("itm")
        return self.itm(pool(text_states, text_mask, self.text_pool), pool(image_states, image_mask, self.cfg.pool))

    # -- cross-encoder scoring of many pairs ---------------------------------------------------

    @property
    def unimodal_layers(self) -> int:
        """Leading encoder layers whose outputs do not depend on the pairing (layouts.unimodal_prefix)."""
        return unimodal_prefix(self.layout)

    def encode_unpaired(
        self, images: Images | None = None, tokens: Tensor | None = None, text_mask: Tensor | None = None
    ) -> dict[str, tuple[Tensor, Tensor | None]]:
        """The pair-independent part of a joint forward, for images and/or captions on their own:
        embeddings and the unimodal prefix layers. Returns {stream: (states, key mask)}."""
        p = self.unimodal_layers
        out = {}
        if tokens is not None:
            x, pad = self.embed_text(tokens, text_mask)
            out["text"] = (self.encoder({"text": x}, {"text": pad}, layers=slice(0, p))["text"], pad)
        if images is not None:
            x, pad = self.embed_image(images)
            out["image"] = (self.encoder({"image": x}, {"image": pad}, layers=slice(0, p))["image"], pad)
        return out

    def pair_logits(
        self,
        text: tuple[Tensor, Tensor | None],
        image: tuple[Tensor, Tensor | None],
        text_index: Tensor,
        image_index: Tensor,
    ) -> Tensor:
        """ITM logits [P] of the pairs (image_index[k], text_index[k]), given `encode_unpaired`
        outputs: only the layers after the unimodal prefix run per pair. Text padding beyond the
        longest caption among the pairs is cut off (keys there are masked anyway)."""
        tx, tpad = text
        ix, ipad = image
        # index_select, not x[idx]: with repeated indices the backward of advanced indexing sums
        # in a thread-dependent order on CPU, which would make training non-reproducible.
        tpad = None if tpad is None else tpad[text_index]
        tx = tx.index_select(0, text_index)
        if tpad is not None:
            n = int(tpad.sum(1).max())
            tx, tpad = tx[:, :n], tpad[:, :n]
            tpad = None if bool(tpad.all()) else tpad
        ipad = None if ipad is None else ipad[image_index]
        x = {"text": tx, "image": ix.index_select(0, image_index)}
        x = self.encoder(x, {"text": tpad, "image": ipad}, layers=slice(self.unimodal_layers, None))
        return self.itm_logits(self.final_norm("text", x["text"]), self.final_norm("image", x["image"]), tpad, ipad)

    def mlm_logits(self, text_states: Tensor) -> Tensor:
        self._require("mlm")
        return self.mlm(text_states, self.text_embed.tok.weight)
