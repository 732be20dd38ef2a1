"""Masked-token loss in bits per token on captions, with and without the image.

How much the image lowers the loss is a first, cheap measure of a merged model's use of vision
(the full cross-modal ablation diagnostic comes with region inputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mmtlab.data.pairs import ImageCache
from mmtlab.objectives.mlm import IGNORE, mask_caption_tokens
from mmtlab.progress import track


@torch.no_grad()
def evaluate_mlm(
    model,
    tokenizer,
    records: Sequence,
    *,
    prob: float = 0.15,
    seed: int = 0,
    batch_size: int = 256,
    device="cpu",
    progress: bool = True,
    source=None,
) -> dict:
    """Same masked positions for both conditions; every chosen token becomes [MASK].
    `source` gives the image inputs per record (data.loader.image_source); default: pixels."""
    model.eval()
    t = model.cfg.text
    cache = source if source is not None else ImageCache(records, model.cfg.image.size, keep=False)
    pairs = [(ri, c) for ri, r in enumerate(records) for c in r.captions if c and c.strip()]
    nats = {"with_image": 0.0, "without_image": 0.0}
    n_tokens = 0
    skipped = 0
    for b, start in enumerate(track(range(0, len(pairs), batch_size), "masked-token loss", enabled=progress)):
        chunk = []
        for ri, c in pairs[start : start + batch_size]:
            img = cache.get(ri)
            if img is None:
                skipped += 1
            else:
                chunk.append((img, c))
        if not chunk:
            continue
        tokens, mask = tokenizer([c for _, c in chunk])
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        _, labels = mask_caption_tokens(tokens, mask, t, prob, g)
        chosen = labels != IGNORE
        inputs = tokens.masked_fill(chosen, t.mask_id).to(device)
        images = cache.stack([im for im, _ in chunk]).to(device)
        mask = mask.to(device)
        for cond, imgs in (("with_image", images), ("without_image", None)):
            states = model(images=imgs, tokens=inputs, text_mask=mask)["text"]
            logits = model.mlm_logits(states[chosen.to(device)]).float()
            nats[cond] += F.cross_entropy(logits, labels[chosen].to(device), reduction="sum").item()
        n_tokens += int(chosen.sum())
    if n_tokens == 0:
        raise ValueError("no tokens were masked; are the captions empty?")
    bits = {k: v / n_tokens / math.log(2) for k, v in nats.items()}
    return {
        "bits_per_token_with_image": bits["with_image"],
        "bits_per_token_without_image": bits["without_image"],
        "image_gain_bits": bits["without_image"] - bits["with_image"],
        "n_masked_tokens": n_tokens,
        "skipped_images": skipped,
        "mask_prob": prob,
    }
