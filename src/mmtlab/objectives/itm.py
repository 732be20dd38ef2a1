"""Image-text matching, the cross-encoder objectives.

`itm` (ViLBERT/UNITER "alignment"): each image keeps its caption or, with probability 0.5, gets
the caption of another image of the batch (random, or a hard negative drawn in proportion to the
softmax of the contrastive similarities, as ALBEF does); a binary classifier on the joint output
says match / no match. Masked language and region modelling ride on the same joint pass, but only
on matching pairs: a negative pair's tokens and regions are neither masked nor predicted (there is
nothing in the image to recover a mismatched caption's words from).

`itm_contrastive` (Hendricks et al. 2021 "contrastive" loss for multimodal-attention models): each
image is scored by the cross-encoder against N candidate captions, its own and N - 1 negatives
(the other captions of the batch, topped up from a bank of random training captions when N exceeds
the batch), and a softmax cross-entropy picks its own. Every candidate is a joint forward, so the
cost is B x N pair passes per step; the unimodal prefix layers are run once per image and caption.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class Pairing:
    text_index: Tensor  # [B] which batch caption image i is paired with
    is_match: Tensor  # [B] bool


def sample_pairing(
    image_index: Tensor,
    generator: torch.Generator | None,
    similarity: Tensor | None = None,
    negative_prob: float = 0.5,
) -> Pairing:
    """Replace each image's caption, with probability `negative_prob`, by the caption of another
    image (a different `image_index`): uniformly, or with probability softmax(similarity[i]) over
    the allowed captions when `similarity` [B, B] is given (hard negatives)."""
    b = image_index.shape[0]
    dev = image_index.device
    other = image_index[:, None] != image_index[None, :]
    has_other = other.any(1)
    negative = (torch.rand(b, generator=generator, device=dev) < negative_prob) & has_other
    if similarity is None:
        weights = other.float()
    else:
        weights = torch.softmax(similarity.float().masked_fill(~other, float("-inf")), dim=1).nan_to_num(0.0)
    weights[~has_other] = 1.0  # never used (those rows stay positive), but multinomial needs mass
    choice = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    text_index = torch.where(negative, choice, torch.arange(b, device=dev))
    return Pairing(text_index, ~negative)


def itm_loss(logits: Tensor, is_match: Tensor) -> Tensor:
    """Mean binary cross-entropy of the match logits."""
    return F.binary_cross_entropy_with_logits(logits.float(), is_match.float())


class ITM(nn.Module):
    name = "itm"

    def forward(self, step) -> Tensor:
        joint = step.masked
        logits = step.model.itm_logits(joint.text_states, joint.image_states, joint.text_mask, joint.image_mask)
        return itm_loss(logits, joint.is_match)


@dataclass
class Candidates:
    tokens: Tensor  # [T, L] the pool of captions: the batch's, then the bank's
    text_mask: Tensor  # [T, L]
    index: Tensor  # [B, N] pool caption of candidate n of image i (n = 0: its own caption)
    valid: Tensor  # [B, N] False where the pool had too few captions of other images


def choose_candidates(
    image_index: Tensor, pool_image_index: Tensor, n: int, generator: torch.Generator | None, similarity=None
) -> tuple[Tensor, Tensor]:
    """For each image i (whose own caption is pool entry i): its caption, then n - 1 pool captions
    of other images, random or (with `similarity` [B, T]) the most similar ones."""
    b, t = image_index.shape[0], pool_image_index.shape[0]
    allowed = image_index[:, None] != pool_image_index[None, :]
    keys = torch.rand(b, t, generator=generator, device=image_index.device) if similarity is None else similarity
    keys = keys.float().masked_fill(~allowed, float("-inf"))
    k = min(n - 1, t)
    top = keys.topk(k, dim=1)
    own = torch.arange(b, device=image_index.device)[:, None]
    index = torch.cat([own, top.indices], dim=1)
    valid = torch.cat([torch.ones_like(own, dtype=torch.bool), top.values > float("-inf")], dim=1)
    if k < n - 1:  # not enough captions anywhere: pad with invalid candidates
        pad = n - 1 - k
        index = torch.cat([index, own.expand(b, pad)], dim=1)
        valid = torch.cat([valid, torch.zeros(b, pad, dtype=torch.bool, device=valid.device)], dim=1)
    return index, valid


class ITMContrastive(nn.Module):
    name = "itm_contrastive"

    def forward(self, step) -> Tensor:
        c: Candidates = step.itm_candidates
        model = step.model
        b, n = c.index.shape
        text = model.encode_unpaired(tokens=c.tokens, text_mask=c.text_mask)["text"]
        image = model.encode_unpaired(images=step.batch.images)["image"]
        image_idx = torch.arange(b, device=c.index.device).repeat_interleave(n)
        logits = model.pair_logits(text, image, c.index.flatten(), image_idx).view(b, n)
        logits = logits.float().masked_fill(~c.valid, float("-inf"))
        return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device))


class CaptionBank:
    """Negative captions for itm_contrastive: uniform draws from the training captions, made with
    the step's generator so a resumed run draws the same ones (a FIFO of past batches would not
    survive a restart)."""

    def __init__(self, dataset, tokenizer):
        self.dataset, self.tokenizer = dataset, tokenizer

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Token ids [n, L], mask [n, L], image (record) index [n]."""
        picks = torch.randint(len(self.dataset.pairs), (n,), generator=generator, device=generator.device).tolist()
        pairs = [self.dataset.pairs[i] for i in picks]
        tokens, mask = self.tokenizer([self.dataset.records[ri].captions[ci] for ri, ci in pairs])
        return tokens, mask, torch.tensor([ri for ri, _ in pairs], dtype=torch.long)
