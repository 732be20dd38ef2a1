"""Masked language modelling (BERT): 15% of real tokens are chosen; of those 80% become [MASK],
10% a random token and 10% stay unchanged; the loss is cross-entropy on the chosen ones."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100


def mask_tokens(
    tokens: Tensor,
    text_mask: Tensor,
    *,
    special_ids: tuple[int, ...],
    mask_id: int,
    vocab_size: int,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns (inputs, labels); labels are IGNORE except at the chosen positions."""
    special = torch.tensor(special_ids, device=tokens.device)
    candidates = text_mask & ~torch.isin(tokens, special)
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    chosen = candidates & (u < prob)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))
    r = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    inputs = tokens.masked_fill(chosen & (r < 0.8), mask_id)
    # Random replacements come from the ordinary (non-special) vocabulary.
    ordinary = torch.ones(vocab_size, dtype=torch.bool, device=tokens.device)
    ordinary[special] = False
    pool = ordinary.nonzero().squeeze(1)
    rand_tok = pool[torch.randint(len(pool), tokens.shape, generator=generator, device=tokens.device)]
    inputs = torch.where(chosen & (r >= 0.8) & (r < 0.9), rand_tok, inputs)
    return inputs, labels


def special_token_ids(text_cfg) -> tuple[int, ...]:
    """The ids that are never a caption's word: [PAD], [CLS], [SEP], [MASK]."""
    t = text_cfg
    return (t.pad_id, t.cls_id, t.sep_id, t.mask_id)


def mask_caption_tokens(
    tokens: Tensor, text_mask: Tensor, text_cfg, prob: float = 0.15, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """`mask_tokens` with the special ids, [MASK] id and vocabulary of a model's text config."""
    t = text_cfg
    return mask_tokens(
        tokens,
        text_mask,
        special_ids=special_token_ids(t),
        mask_id=t.mask_id,
        vocab_size=t.vocab_size,
        prob=prob,
        generator=generator,
    )


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over labelled positions; `logits` [..., V] aligned with `labels`."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE)


class MLM(nn.Module):
    name = "mlm"

    def __init__(self, mask_prob: float = 0.15):
        super().__init__()
        self.mask_prob = mask_prob

    def forward(self, step) -> Tensor:
        masked = step.masked
        chosen = masked.labels != IGNORE
        if not chosen.any():  # possible for a tiny batch of very short captions
            return masked.text_states.sum() * 0.0
        logits = step.model.mlm_logits(masked.text_states[chosen])
        return mlm_loss(logits, masked.labels[chosen])
