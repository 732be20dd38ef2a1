"""Objectives: one module per loss family, combined by weights from the run config.

An objective reads the forward passes it needs from a `StepContext`, which computes each pass
at most once per step: contrastive reads `step.embeddings` (clean unimodal passes); MLM, MRM and
ITM read `step.masked`, one joint pass over the (possibly re-paired) batch with masked caption
tokens and masked regions (in every pair; MLM/MRM targets only on matching ones); itm_contrastive
reads `step.itm_candidates`; caption reads `step.caption` (the generative pass of decoder
families); data2vec reads `step.data2vec` (teacher and masked student passes per modality). Two
objectives that need the same pass share it. Passes run on first use and the objectives are
visited in a fresh random order every step, so a two-pass model (MaMMUT: contrastive and
generative) runs its passes in shuffled order; the weighted sum gets one backward. An objective
may also define `after_optimizer_step(model, step)`, which the loop calls after each optimizer
step (data2vec's EMA teacher follows the student there).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from mmtlab.config import MRM_OBJECTIVES, RunConfig
from mmtlab.families import family_of
from mmtlab.models.vision import random_crop_boxes
from mmtlab.objectives.caption import Caption, caption_loss, next_token_labels
from mmtlab.objectives.contrastive import Contrastive, info_nce
from mmtlab.objectives.data2vec import Data2VecLoss, data2vec_pass
from mmtlab.objectives.itm import (
    ITM,
    Candidates,
    CaptionBank,
    ITMContrastive,
    Pairing,
    choose_candidates,
    sample_pairing,
)
from mmtlab.objectives.mlm import IGNORE, MLM, mask_caption_tokens, mask_tokens, mlm_loss
from mmtlab.objectives.mrm import MRMKL, MRMClassification, MRMRegression, mask_regions
from mmtlab.objectives.sigmoid import FocalContrastive, SigLIP, focal_sigmoid_loss, sigmoid_loss
from mmtlab.objectives.zloss import ZLoss, z_loss

__all__ = [
    "Caption", "Contrastive", "Data2VecLoss", "FocalContrastive", "ITM", "ITMContrastive", "MLM", "MRMKL",
    "MRMClassification", "MRMRegression", "Objectives", "PassPlan", "SigLIP", "StepContext", "ZLoss",
    "build_objectives", "caption_loss", "focal_sigmoid_loss", "info_nce", "mask_regions", "mask_tokens", "mlm_loss",
    "next_token_labels", "sigmoid_loss", "z_loss",
]  # fmt: skip


@dataclass
class MaskedPass:
    inputs: Tensor  # token ids after masking
    labels: Tensor  # original ids at chosen positions, -100 elsewhere (and everywhere in negative pairs)
    text_states: Tensor  # final text states of the joint forward [B, L, D]
    image_states: Tensor | None = None  # final image states [B, N, D]
    text_mask: Tensor | None = None  # [B, L] of the (re-paired) captions
    image_mask: Tensor | None = None  # [B, N] key mask of the image tokens (None: all real)
    region_chosen: Tensor | None = None  # [B, R] MRM targets: masked regions of matching pairs only
    is_match: Tensor | None = None  # [B] bool: the pair is the original one (always True without ITM)


@dataclass(frozen=True)
class PassPlan:
    """What the joint pass must do for the configured objectives."""

    mask_text: bool = True
    text_mask_prob: float = 0.15
    mask_regions: bool = False
    region_mask_prob: float = 0.15
    itm_negatives: str | None = None  # None: no re-pairing; "random" | "hard"
    candidates: int = 32  # itm_contrastive
    candidate_negatives: str = "random"


@dataclass
class CaptionPass:
    logits: Tensor  # [B, L - 1, V]: position t predicts token t + 1
    labels: Tensor  # [B, L - 1]: token t + 1, or IGNORE (padding, VQA prompt)


class StepContext:
    """The forward passes of one training step, each computed on first use."""

    def __init__(
        self,
        model: nn.Module,
        batch,
        generator: torch.Generator,
        mask_prob: float = 0.15,
        *,
        plan: PassPlan | None = None,
        bank: CaptionBank | None = None,
        dp=None,
    ):
        self.model = model
        self.batch = batch
        self.generator = generator
        self.plan = plan or PassPlan(text_mask_prob=mask_prob)
        self.mask_prob = self.plan.text_mask_prob
        self.bank = bank
        self.dp = dp  # train.distributed.DataParallel, or None in a single process
        self.passes = family_of(model).passes  # which passes this family runs (mmtlab/families.py)

    @property
    def world(self) -> int:
        """Number of data-parallel processes sharing the global batch."""
        return 1 if self.dp is None else self.dp.world

    def gather(self, x: Tensor) -> tuple[Tensor, int]:
        """`x` [n, ...] of every data-parallel process concatenated along dim 0, and the row where
        this process's part starts; gradients flow back to each process's own rows. For losses over
        the global batch (contrastive negatives). In one process: (x, 0)."""
        return (x, 0) if self.dp is None else self.dp.all_gather_with_grad(x)

    @property
    def decoder(self) -> bool:
        return self.passes == "decoder"

    @cached_property
    def pos_box(self) -> Tensor | None:
        """Cropped positional embeddings: one random crop of the positional grid per image, in training."""
        image = self.model.cfg.image
        if not (image.cpe and self.model.training):
            return None
        g = self.generator
        boxes = random_crop_boxes(len(self.batch), g, image.cpe_scale, image.cpe_ratio)
        return boxes.to(self.batch.images.device)

    @cached_property
    def image_tokens(self) -> Tensor:
        """Decoder families: the ViT's tokens, encoded once for both passes."""
        return self.model.image_tokens(self.batch.images, pos_box=self.pos_box)

    @cached_property
    def text_features(self) -> Tensor:
        """Decoder families: the contrastive text pass (no image; bidirectional for MaMMUT)."""
        return self.model.text_features(self.batch.tokens, self.batch.text_mask)

    @cached_property
    def embeddings(self) -> tuple[Tensor, Tensor]:
        b = self.batch
        if self.decoder:
            return self.model.embed_image(self.image_tokens), self.model.embed_text(self.text_features, b.text_mask)
        crops = {} if self.pos_box is None else {"pos_box": self.pos_box}
        return self.model.encode_image(b.images, **crops), self.model.encode_text(b.tokens, b.text_mask)

    @cached_property
    def contrastive_logits(self) -> Tensor:
        """Pairwise image-text logits [B, B] (scale * cosine + bias), in fp32."""
        image_emb, text_emb = self.embeddings
        return self.model.contrastive.logits(image_emb.float(), text_emb.float())

    @cached_property
    def caption(self) -> CaptionPass:
        """Decoder families: the generative pass (causal, cross-attention to the image)."""
        b = self.batch
        if self.passes == "sequence":  # a causal LM or Flamingo: the batch holds all it reads
            logits = self.model.sequence_logits(b)
        else:
            reuse = self.text_features if self.model.caption_continues_contrastive else None
            logits = self.model.caption_logits(self.image_tokens, b.tokens, text_features=reuse)
        return CaptionPass(logits[:, :-1], next_token_labels(b.tokens, b.text_mask, b.target_mask))

    def similarity(self) -> Tensor:
        """Contrastive logits [B, B] of the batch (image x caption), without gradient."""
        img, txt = self.embeddings
        return (self.model.contrastive.scale() * img @ txt.T).detach()

    @cached_property
    def pairing(self) -> Pairing:
        """Which caption each image meets in the joint pass (ITM negatives), or the identity."""
        b, plan = self.batch, self.plan
        if plan.itm_negatives is None:
            n = len(b)
            return Pairing(
                torch.arange(n, device=b.tokens.device), torch.ones(n, dtype=torch.bool, device=b.tokens.device)
            )
        sim = self.similarity() if plan.itm_negatives == "hard" else None
        return sample_pairing(b.image_index, self.generator, sim)

    @cached_property
    def masked(self) -> MaskedPass:
        """The joint pass: images with (re-paired) captions, caption tokens and regions masked in
        every pair; MLM and MRM targets only on matching pairs. Masking negatives too (as ViLBERT
        and LXMERT do) keeps ITM from telling a pair by whether it contains [MASK] tokens."""
        b, t, plan = self.batch, self.model.cfg.text, self.plan
        pairing = self.pairing
        tokens, text_mask = b.tokens[pairing.text_index], b.text_mask[pairing.text_index]
        if plan.mask_text:
            inputs, labels = mask_caption_tokens(tokens, text_mask, t, plan.text_mask_prob, self.generator)
            labels = labels.masked_fill(~pairing.is_match[:, None], IGNORE)
        else:
            inputs, labels = tokens, torch.full_like(tokens, IGNORE)
        images, chosen = b.images, None
        if plan.mask_regions:
            images, chosen = mask_regions(images, plan.region_mask_prob, self.generator)
            chosen = chosen & pairing.is_match[:, None]
        crops = {} if self.pos_box is None else {"pos_box": self.pos_box}
        states = self.model(images=images, tokens=inputs, text_mask=text_mask, **crops)
        return MaskedPass(
            inputs,
            labels,
            states["text"],
            states.get("image"),
            text_mask,
            self.model.image_key_mask(images),
            chosen,
            pairing.is_match,
        )

    @cached_property
    def itm_candidates(self) -> Candidates:
        """The batch captions, topped up from the bank to `candidates`, and each image's choice."""
        b, plan = self.batch, self.plan
        tokens, mask, owner = b.tokens, b.text_mask, b.image_index
        extra = plan.candidates - len(b)
        if extra > 0 and self.bank is not None:
            bt, bm, bi = self.bank.sample(extra, self.generator)
            width = max(tokens.shape[1], bt.shape[1])
            tokens = torch.cat(
                [
                    _pad_to(tokens, width, self.model.cfg.text.pad_id),
                    _pad_to(bt.to(tokens.device), width, self.model.cfg.text.pad_id),
                ]
            )
            mask = torch.cat([_pad_to(mask, width, False), _pad_to(bm.to(mask.device), width, False)])
            owner = torch.cat([owner, bi.to(owner.device)])
        sim = None
        if plan.candidate_negatives == "hard":
            with torch.no_grad():
                pool = self.model.encode_text(tokens, mask)
            img = self.embeddings[0].detach()
            sim = img @ pool.T
        index, valid = choose_candidates(b.image_index, owner, plan.candidates, self.generator, sim)
        return Candidates(tokens, mask, index, valid)

    @cached_property
    def data2vec(self):
        """Per modality: student predictions and teacher targets at the masked positions."""
        return data2vec_pass(self.model, self.batch, self.generator)


def _pad_to(x: Tensor, width: int, value) -> Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


REGISTRY: dict[str, type[nn.Module]] = {
    "contrastive": Contrastive,
    "siglip": SigLIP,
    "focal_contrastive": FocalContrastive,
    "zloss": ZLoss,
    "mlm": MLM,
    "caption": Caption,
    "mrm_cls": MRMClassification,
    "mrm_kl": MRMKL,
    "mrm_regress": MRMRegression,
    "itm": ITM,
    "itm_contrastive": ITMContrastive,
    "data2vec": Data2VecLoss,
}


def pass_plan(cfg: RunConfig) -> PassPlan:
    obj = cfg.objectives
    mlm = obj.get("mlm")
    mrm = [obj[n] for n in MRM_OBJECTIVES if n in obj]
    itm, itc = obj.get("itm"), obj.get("itm_contrastive")
    return PassPlan(
        mask_text=mlm is not None,
        text_mask_prob=mlm.mask_prob if mlm is not None and mlm.mask_prob is not None else 0.15,
        mask_regions=bool(mrm),
        region_mask_prob=next((m.mask_prob for m in mrm if m.mask_prob is not None), 0.15),
        itm_negatives=(itm.negatives or "random") if itm is not None else None,
        candidates=(itc.candidates or 32) if itc is not None else 32,
        candidate_negatives=(itc.negatives or "random") if itc is not None else "random",
    )


class Objectives(nn.Module):
    """Weighted sum of the configured objectives; also reports each one's value."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.weights = {name: oc.weight for name, oc in cfg.objectives.items()}
        self.plan = pass_plan(cfg)
        self.mask_prob = self.plan.text_mask_prob
        self.bank: CaptionBank | None = None
        self.losses = nn.ModuleDict()
        for name, oc in cfg.objectives.items():
            if name == "mlm":
                self.losses[name] = MLM(self.mask_prob)
            elif name == "mrm_regress":
                self.losses[name] = MRMRegression(oc.loss or "mse")
            elif name == "focal_contrastive":
                self.losses[name] = FocalContrastive(1.0 if oc.gamma is None else oc.gamma)
            else:
                self.losses[name] = REGISTRY[name]()

    def bind_data(self, dataset, tokenizer) -> None:
        """Give objectives that draw extra training captions (the itm_contrastive bank) the data."""
        if "itm_contrastive" in self.losses:
            self.bank = CaptionBank(dataset, tokenizer)

    def forward(self, model: nn.Module, batch, generator: torch.Generator, dp=None) -> tuple[Tensor, dict[str, Tensor]]:
        step = StepContext(model, batch, generator, plan=self.plan, bank=self.bank, dp=dp)
        names = list(self.losses)
        if len(names) > 1:  # a fresh order each step: no pass always runs first
            order = torch.randperm(len(names), generator=generator, device=generator.device).tolist()
            names = [names[i] for i in order]
        total, parts = 0.0, {}
        for name in names:
            value = self.losses[name](step)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        # A dataset's weight in a mixture (Flamingo's per-dataset loss weights); 1 otherwise.
        return total * batch.loss_weight, {name: parts[name] for name in self.losses}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called by the training loop after optimizer step `step` (1-based)."""
        for fn in self.losses.values():
            if hasattr(fn, "after_optimizer_step"):
                fn.after_optimizer_step(model, step)


def build_objectives(cfg: RunConfig) -> Objectives:
    return Objectives(cfg)
