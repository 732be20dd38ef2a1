"""Objectives: one module per loss family, combined by weights from the run config.

An objective reads the forward passes it needs from a `StepContext`, which computes each pass
at most once per step: contrastive reads `step.embeddings` (clean unimodal passes); MLM, MRM and
ITM read `step.masked`, one joint pass over the (possibly re-paired) batch with masked caption
tokens and masked regions (in every pair; MLM/MRM targets only on matching ones); itm_contrastive
reads `step.itm_candidates`. Two objectives that need the same pass share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from mmtlab.config import MRM_OBJECTIVES, RunConfig
from mmtlab.objectives.contrastive import Contrastive, info_nce
from mmtlab.objectives.itm import (
    ITM,
    Candidates,
    CaptionBank,
    ITMContrastive,
    Pairing,
    choose_candidates,
    sample_pairing,
)
from mmtlab.objectives.mlm import IGNORE, MLM, mask_tokens, mlm_loss
from mmtlab.objectives.mrm import MRMKL, MRMClassification, MRMRegression, mask_regions

__all__ = [
    "Contrastive", "ITM", "ITMContrastive", "MLM", "MRMKL", "MRMClassification", "MRMRegression", "Objectives",
    "PassPlan", "StepContext", "build_objectives", "info_nce", "mask_regions", "mask_tokens", "mlm_loss",
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
    ):
        self.model = model
        self.batch = batch
        self.generator = generator
        self.plan = plan or PassPlan(text_mask_prob=mask_prob)
        self.mask_prob = self.plan.text_mask_prob
        self.bank = bank

    @cached_property
    def embeddings(self) -> tuple[Tensor, Tensor]:
        b = self.batch
        return self.model.encode_image(b.images), self.model.encode_text(b.tokens, b.text_mask)

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
            inputs, labels = mask_tokens(
                tokens,
                text_mask,
                special_ids=(t.pad_id, t.cls_id, t.sep_id, t.mask_id),
                mask_id=t.mask_id,
                vocab_size=t.vocab_size,
                prob=plan.text_mask_prob,
                generator=self.generator,
            )
            labels = labels.masked_fill(~pairing.is_match[:, None], IGNORE)
        else:
            inputs, labels = tokens, torch.full_like(tokens, IGNORE)
        images, chosen = b.images, None
        if plan.mask_regions:
            images, chosen = mask_regions(images, plan.region_mask_prob, self.generator)
            chosen = chosen & pairing.is_match[:, None]
        states = self.model(images=images, tokens=inputs, text_mask=text_mask)
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


def _pad_to(x: Tensor, width: int, value) -> Tensor:
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


REGISTRY: dict[str, type[nn.Module]] = {
    "contrastive": Contrastive,
    "mlm": MLM,
    "mrm_cls": MRMClassification,
    "mrm_kl": MRMKL,
    "mrm_regress": MRMRegression,
    "itm": ITM,
    "itm_contrastive": ITMContrastive,
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
            else:
                self.losses[name] = REGISTRY[name]()

    def bind_data(self, dataset, tokenizer) -> None:
        """Give objectives that draw extra training captions (the itm_contrastive bank) the data."""
        if "itm_contrastive" in self.losses:
            self.bank = CaptionBank(dataset, tokenizer)

    def forward(self, model: nn.Module, batch, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        step = StepContext(model, batch, generator, plan=self.plan, bank=self.bank)
        total, parts = 0.0, {}
        for name, fn in self.losses.items():
            value = fn(step)
            parts[name] = value.detach()
            total = total + self.weights[name] * value
        return total, parts


def build_objectives(cfg: RunConfig) -> Objectives:
    return Objectives(cfg)
