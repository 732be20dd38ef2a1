"""Which positions a masked-prediction objective hides, per modality.

- text:   BERT's 15% of tokens, 80% [MASK] / 10% random / 10% unchanged (`mask_tokens`, objectives/mlm.py)
- image:  BEiT block-wise masking: rectangles of >= `min_block` patches with random aspect ratio
          until `ratio` of the patch grid is covered (data2vec: 60%)
- speech: wav2vec 2.0 span masking: spans of `length` frames start at a random `prob / length` of
          the frames (data2vec: p = 0.065 per frame, span 10, so about half of all frames)

The defaults live in config.py (DATA2VEC_DEFAULTS). Both functions draw from a Python RNG seeded
by the step's torch generator, so masks replay exactly on resume, and return boolean [B, N] masks
(True = hidden) with the same number of hidden positions in every row, which data2vec 2.0 needs
to drop them from a dense batch.
"""

from __future__ import annotations

import math
import random

import torch
from torch import Tensor

from mmtlab.objectives.mlm import mask_tokens

__all__ = ["block_mask", "mask_tokens", "span_mask"]


def _rng(generator: torch.Generator | None) -> random.Random:
    return random.Random(int(torch.randint(2**62, (1,), generator=generator)))


def block_mask(
    batch: int,
    grid: tuple[int, int],
    ratio: float,
    min_block: int = 16,
    *,
    min_aspect: float = 0.3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """BEiT / data2vec-vision block masking; exactly round(ratio * h * w) patches per image.

    Blocks: area ~ U(min_block, remaining), aspect ratio log-uniform in [min_aspect, 1/min_aspect],
    placed uniformly, each adding at least one new patch (10 attempts per block; BEiT's
    MaskingGenerator, as data2vec_vision.py's make_mask). When blocks stop fitting, random patches
    top the count up, as data2vec 2.0's compute_block_mask_2d does.
    """
    h, w = grid
    target = round(ratio * h * w)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    rng = _rng(generator)
    out = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        m = out[b]
        count = 0
        while count < target:
            remaining = target - count
            added = 0
            for _ in range(10):
                area = rng.uniform(min(min_block, remaining), remaining)
                aspect = math.exp(rng.uniform(*log_aspect))
                bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if not (0 < bh <= h and 0 < bw <= w):
                    continue
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                new = bh * bw - int(m[top : top + bh, left : left + bw].sum())
                if 0 < new <= remaining:
                    m[top : top + bh, left : left + bw] = True
                    added = new
                    break
            if added == 0:
                break
            count += added
        if count < target:
            free = (~m).flatten().nonzero().squeeze(1).tolist()
            for i in rng.sample(free, target - count):
                m.view(-1)[i] = True
    return out.view(batch, h * w)


def span_mask(
    batch: int,
    length: int,
    prob: float,
    span: int = 10,
    *,
    lengths: Tensor | None = None,
    min_spans: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """wav2vec 2.0's compute_mask_indices (static spans, overlaps allowed, require_same_masks).

    Per row of real length n: int(prob * n / span + u) spans (u ~ U[0, 1), at least `min_spans`),
    start indices drawn without replacement from [0, n - span); the union of the spans is masked.
    Then every row keeps a random subset of its masked positions of the smallest row's size.
    `prob` is fairseq's mask_prob (0.65 = the paper's p = 0.065 times span 10).
    """
    rng = _rng(generator)
    ns = [length] * batch if lengths is None else [int(n) for n in lengths]
    rows = []
    for n in ns:
        k = max(min_spans, int(prob * n / span + rng.random()))
        s = span
        if n - s <= k:  # very short rows: shorter spans so that k of them still fit
            s = max(1, n - k - 1)
        starts = rng.sample(range(max(1, n - s)), min(k, max(1, n - s)))
        rows.append(sorted({i for st in starts for i in range(st, min(n, st + s))}))
    keep = min(len(r) for r in rows)
    out = torch.zeros(batch, length, dtype=torch.bool)
    for b, r in enumerate(rows):
        chosen = rng.sample(r, keep) if len(r) > keep else r
        out[b, chosen] = True
    return out
