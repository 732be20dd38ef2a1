"""Zero-shot image-text retrieval: Recall@K with several captions per image (Flickr30k/COCO protocol).

Ties never flatter the model: an item that scores the same as the correct one counts as ranked
above it. Scores that are NaN count as -inf.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmtlab.data.pairs import ImageCache
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.progress import track


def recall_at_k(scores, text_to_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """`scores` [n_images, n_texts]; `text_to_image[j]` = image index of caption j.

    t2i: caption j is a hit at k if fewer than k other images score >= its image.
    i2t: image i is a hit at k if fewer than k captions of *other* images score >= its best caption.
    Returns percentages: i2t_r{k}, t2i_r{k} for each k (images without captions are left out of i2t).
    """
    s = torch.as_tensor(scores, dtype=torch.float64)
    s = torch.nan_to_num(s, nan=-math.inf)
    t2i = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img, n_txt = s.shape
    if t2i.shape != (n_txt,):
        raise ValueError(f"text_to_image has shape {tuple(t2i.shape)}, expected ({n_txt},) for scores {tuple(s.shape)}")
    cols = torch.arange(n_txt)
    correct = s[t2i, cols]
    t2i_rank = (s >= correct[None, :]).sum(0) - 1  # the correct image itself is >= itself
    positive = torch.zeros(n_img, n_txt, dtype=torch.bool)
    positive[t2i, cols] = True
    has_caption = positive.any(1)
    best = s.masked_fill(~positive, -math.inf).max(1).values
    i2t_rank = ((s >= best[:, None]) & ~positive).sum(1)[has_caption]
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * (i2t_rank < k).double().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * (t2i_rank < k).double().mean().item()
    return out


def chance_recall(text_to_image, n_images: int, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Expected Recall@K (%) of random scores for the same image/caption structure."""
    t2i = torch.as_tensor(text_to_image, dtype=torch.long)
    n_txt = len(t2i)
    counts = torch.bincount(t2i, minlength=n_images).tolist()
    out = {}
    for k in ks:
        # P(at least one of an image's c captions lands in a random top k of n_txt).
        hits = [1 - math.comb(n_txt - c, k) / math.comb(n_txt, k) for c in counts if c > 0]
        out[f"i2t_r{k}"] = 100.0 * sum(hits) / len(hits)
    for k in ks:
        out[f"t2i_r{k}"] = 100.0 * min(1.0, k / n_images)
    return out


@dataclass
class Embedded:
    images: Tensor  # [n_images, E]
    texts: Tensor  # [n_texts, E]
    text_to_image: Tensor  # [n_texts]
    captions: list[str]
    record_index: list[int]  # record of each embedded image
    skipped_images: int
    empty_captions: int


def encode_decodable_images(records: Sequence, source, encode, batch_size: int, progress: bool) -> list[int]:
    """Call `encode(batch)` on the stacked inputs of every record whose image decodes (in batches
    of `batch_size`); returns those records' indices. Undecodable images are counted by `source`."""
    kept, pending = [], []

    def flush():
        if pending:
            encode(source.stack(pending))
            pending.clear()

    for ri in track(range(len(records)), "encoding images", enabled=progress):
        item = source.get(ri)
        if item is None:
            continue
        kept.append(ri)
        pending.append(item)
        if len(pending) == batch_size:
            flush()
    flush()
    return kept


def captions_of(records: Sequence, kept: list[int]) -> tuple[list[str], list[int], int]:
    """The non-empty captions of the kept records, the position in `kept` of each one's image, and
    how many empty captions were skipped."""
    captions, owner, empty = [], [], 0
    for new_i, ri in enumerate(kept):
        for c in records[ri].captions:
            if c and c.strip():
                captions.append(c)
                owner.append(new_i)
            else:
                empty += 1
    return captions, owner, empty


@torch.no_grad()
def embed_records(
    model,
    tokenizer: TextTokenizer,
    records: Sequence,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
    source=None,
) -> Embedded:
    """Encode every decodable image once and every non-empty caption of those images.

    `source` gives the model's image inputs per record (data.loader.image_source); default: pixels.
    """
    model.eval()
    cache = source if source is not None else ImageCache(records, model.cfg.image.size, keep=False)
    image_embs = []
    kept = encode_decodable_images(
        records,
        cache,
        lambda batch: image_embs.append(model.encode_image(batch.to(device)).float().cpu()),
        batch_size,
        progress,
    )
    captions, owner, empty = captions_of(records, kept)
    text_embs = []
    for start in track(range(0, len(captions), batch_size), "encoding captions", enabled=progress):
        tokens, mask = tokenizer(captions[start : start + batch_size])
        text_embs.append(model.encode_text(tokens.to(device), mask.to(device)).float().cpu())
    if not kept or not captions:
        raise ValueError("nothing to evaluate: no decodable image with a non-empty caption")
    return Embedded(
        images=torch.cat(image_embs),
        texts=torch.cat(text_embs),
        text_to_image=torch.tensor(owner),
        captions=captions,
        record_index=kept,
        skipped_images=len(cache.bad),
        empty_captions=empty,
    )


def retrieval_metrics(emb: Embedded, ks: Sequence[int] = (1, 5, 10)) -> dict:
    scores = emb.images @ emb.texts.T
    metrics = recall_at_k(scores, emb.text_to_image, ks)
    metrics["rsum"] = sum(metrics.values())
    chance = chance_recall(emb.text_to_image, len(emb.images), ks)
    chance["rsum"] = sum(chance.values())
    return {
        **metrics,
        "chance": chance,
        "n_images": len(emb.images),
        "n_texts": len(emb.texts),
        "skipped_images": emb.skipped_images,
        "empty_captions": emb.empty_captions,
    }


def evaluate_retrieval(model, tokenizer, records, *, batch_size=256, device="cpu", progress=True, source=None) -> dict:
    """Dual-encoder zero-shot retrieval over `records` (each with its captions)."""
    return retrieval_metrics(
        embed_records(model, tokenizer, records, batch_size=batch_size, device=device, progress=progress, source=source)
    )
