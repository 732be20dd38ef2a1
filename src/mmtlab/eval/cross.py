"""Cross-encoder zero-shot retrieval: every image x caption pair scored by the joint model's ITM
head (`exhaustive`), or only a shortlist from a dual encoder (`rerank`, as ALBEF and BLIP do).

A joint forward per pair is what makes cross-encoders slow; VOLTA's evaluation runs one forward per
caption x image batch and recomputes everything each time. Here everything that does not depend on
the pairing is computed once: the text and image embeddings and the unimodal prefix layers of the
layout (all layers of a dual encoder, the first k of mixed(k), the single-stream layers of
co-attention and LXMERT; see layouts.unimodal_prefix). Only the remaining layers run per pair, in
large batches, with caption padding trimmed to the longest caption of each batch.

Pairs are scored through one function of the *set* of pairs (canonical order, fixed chunking), so
`rerank` with k >= the gallery size scores exactly the pairs `exhaustive` does, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mmtlab.data.pairs import ImageCache
from mmtlab.eval.retrieval import captions_of, chance_recall, encode_decodable_images, recall_at_k
from mmtlab.progress import track

# Pairs per joint forward. Small models on CPU are compute-bound and fastest with batches that
# stay in cache: 256 scored 1.4x faster than 2048 (merged width-64 region model, one thread).
PAIR_CHUNK = 256


@dataclass
class Unpaired:
    """Pair-independent states of an evaluation set (see MultimodalTransformer.encode_unpaired)."""

    image: tuple[Tensor, Tensor | None]  # [n_images, Ni, D], key mask [n_images, Ni] or None
    text: tuple[Tensor, Tensor | None]  # [n_texts, Lt, D], key mask [n_texts, Lt] or None
    text_lengths: Tensor  # [n_texts] real tokens per caption
    text_to_image: Tensor  # [n_texts]
    record_index: list[int]
    skipped_images: int
    empty_captions: int

    @property
    def n_images(self) -> int:
        return self.image[0].shape[0]

    @property
    def n_texts(self) -> int:
        return self.text[0].shape[0]


def _cat_masks(masks: list[Tensor | None], lengths: list[int], width: int) -> Tensor | None:
    full = [torch.ones(n, width, dtype=torch.bool) if m is None else m for m, n in zip(masks, lengths)]
    out = torch.cat(full)
    return None if bool(out.all()) else out


@torch.no_grad()
def encode_unpaired_records(
    model, tokenizer, records: Sequence, *, source=None, batch_size: int = 256, progress: bool = True
) -> Unpaired:
    """Run the pair-independent part of the model once per decodable image and per caption."""
    model.eval()
    source = source if source is not None else ImageCache(records, model.cfg.image.size, keep=False)
    states, masks, sizes = [], [], []

    def encode(batch):
        x, pad = model.encode_unpaired(images=batch)["image"]
        states.append(x)
        masks.append(pad)
        sizes.append(x.shape[0])

    kept = encode_decodable_images(records, source, encode, batch_size, progress)
    captions, owner, empty = captions_of(records, kept)
    if not kept or not captions:
        raise ValueError("nothing to evaluate: no decodable image with a non-empty caption")
    tokens, mask = tokenizer(captions)  # one call: every caption padded to the same width
    t_states, t_masks, t_sizes = [], [], []
    for start in track(range(0, len(captions), batch_size), "encoding captions", enabled=progress):
        x, pad = model.encode_unpaired(
            tokens=tokens[start : start + batch_size], text_mask=mask[start : start + batch_size]
        )["text"]
        t_states.append(x)
        t_masks.append(pad)
        t_sizes.append(x.shape[0])
    image_states = torch.cat(states)
    return Unpaired(
        image=(image_states, _cat_masks(masks, sizes, image_states.shape[1])),
        text=(torch.cat(t_states), _cat_masks(t_masks, t_sizes, tokens.shape[1])),
        text_lengths=mask.sum(1),
        text_to_image=torch.tensor(owner),
        record_index=kept,
        skipped_images=len(getattr(source, "bad", ())),
        empty_captions=empty,
    )


@torch.no_grad()
def score_pairs(model, un: Unpaired, pairs: Tensor, *, chunk: int = PAIR_CHUNK, progress: bool = True) -> Tensor:
    """ITM logits of `pairs` [P, 2] (image, text) rows, in the given order.

    Pairs are processed in a canonical order (caption length, caption, image), and a batch never
    mixes caption lengths: no text padding, so attention runs without a key mask (SDPA's fast path
    on CPU; a masked batch was slower than a per-caption loop). The result depends only on the set
    of pairs.
    """
    if pairs.numel() == 0:
        return torch.zeros(0)
    img, txt = pairs[:, 0], pairs[:, 1]
    order = _canonical_order(img, txt, un.text_lengths, un.n_images, un.n_texts)
    lengths = un.text_lengths[txt[order]]
    edges = [0, *(torch.nonzero(lengths[1:] != lengths[:-1]).flatten() + 1).tolist(), len(order)]
    batches = [(s, min(s + chunk, end)) for begin, end in zip(edges[:-1], edges[1:]) for s in range(begin, end, chunk)]
    out = torch.empty(len(pairs))
    for s, e in track(batches, f"scoring {len(pairs):,} pairs", enabled=progress):
        sel = order[s:e]
        out[sel] = model.pair_logits(un.text, un.image, txt[sel], img[sel]).float()
    return out


def _canonical_order(img: Tensor, txt: Tensor, lengths: Tensor, n_img: int, n_txt: int) -> Tensor:
    key = (lengths[txt].long() * n_txt + txt) * n_img + img
    return torch.argsort(key, stable=True)


def all_pairs(n_images: int, n_texts: int) -> Tensor:
    i, j = torch.meshgrid(torch.arange(n_images), torch.arange(n_texts), indexing="ij")
    return torch.stack([i.flatten(), j.flatten()], dim=1)


def exhaustive_scores(model, un: Unpaired, *, chunk: int = PAIR_CHUNK, progress: bool = True) -> Tensor:
    """[n_images, n_texts] ITM logits of every pair."""
    logits = score_pairs(model, un, all_pairs(un.n_images, un.n_texts), chunk=chunk, progress=progress)
    return logits.view(un.n_images, un.n_texts)


@dataclass
class Reranked:
    t2i: Tensor  # [n_images, n_texts] cross scores on each caption's image shortlist, -inf elsewhere
    i2t: Tensor  # [n_images, n_texts] cross scores on each image's caption shortlist, -inf elsewhere
    n_pairs: int  # distinct pairs scored by the cross-encoder
    ceiling: dict  # best achievable R@k of the shortlist (its recall at k = shortlist size)


def rerank_scores(
    model, un: Unpaired, shortlist_scores: Tensor, k: int, *, chunk: int = PAIR_CHUNK, progress: bool = True
) -> Reranked:
    """Cross-encoder scores for each caption's top-k images and each image's top-k captions under
    `shortlist_scores` [n_images, n_texts] (a dual encoder's similarities)."""
    n_img, n_txt = shortlist_scores.shape
    k_img, k_txt = min(k, n_img), min(k, n_txt)
    t2i_top = shortlist_scores.topk(k_img, dim=0).indices  # [k_img, n_txt]
    i2t_top = shortlist_scores.topk(k_txt, dim=1).indices  # [n_img, k_txt]
    t2i_mask = torch.zeros(n_img, n_txt, dtype=torch.bool)
    t2i_mask[t2i_top, torch.arange(n_txt)[None, :].expand(k_img, n_txt)] = True
    i2t_mask = torch.zeros(n_img, n_txt, dtype=torch.bool)
    i2t_mask[torch.arange(n_img)[:, None].expand(n_img, k_txt), i2t_top] = True
    pairs = torch.nonzero(t2i_mask | i2t_mask)
    logits = score_pairs(model, un, pairs, chunk=chunk, progress=progress)
    scores = torch.full((n_img, n_txt), float("-inf"))
    scores[pairs[:, 0], pairs[:, 1]] = logits
    t2i = scores.masked_fill(~t2i_mask, float("-inf"))
    i2t = scores.masked_fill(~i2t_mask, float("-inf"))
    positive = torch.zeros(n_img, n_txt, dtype=torch.bool)
    positive[un.text_to_image, torch.arange(n_txt)] = True
    has_caption = positive.any(1)
    ceiling = {
        "i2t": 100.0 * (i2t_mask & positive).any(1)[has_caption].double().mean().item(),
        "t2i": 100.0 * t2i_mask[un.text_to_image, torch.arange(n_txt)].double().mean().item(),
    }
    return Reranked(t2i, i2t, len(pairs), ceiling)


def cross_metrics(
    model,
    un: Unpaired,
    *,
    mode: str = "cross",
    k: int = 128,
    shortlist_scores: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = PAIR_CHUNK,
    progress: bool = True,
) -> dict:
    """Recall@K of the cross-encoder, exhaustive (`cross`) or reranking a shortlist (`rerank`)."""
    t0 = time.perf_counter()
    extra: dict = {}
    if mode == "cross":
        scores = exhaustive_scores(model, un, chunk=chunk, progress=progress)
        metrics = recall_at_k(scores, un.text_to_image, ks)
        n_pairs = scores.numel()
    elif mode == "rerank":
        if shortlist_scores is None:
            raise ValueError("rerank needs shortlist scores (a dual encoder's similarities)")
        r = rerank_scores(model, un, shortlist_scores, k, chunk=chunk, progress=progress)
        t2i = recall_at_k(r.t2i, un.text_to_image, ks)
        i2t = recall_at_k(r.i2t, un.text_to_image, ks)
        metrics = {
            **{m: v for m, v in i2t.items() if m.startswith("i2t")},
            **{m: v for m, v in t2i.items() if m.startswith("t2i")},
        }
        n_pairs = r.n_pairs
        extra = {
            "k": k,
            "shortlist_ceiling": {"i2t": r.ceiling["i2t"], "t2i": r.ceiling["t2i"]},
            "shortlist": recall_at_k(shortlist_scores, un.text_to_image, ks),
        }
    else:
        raise ValueError(f"mode must be 'cross' or 'rerank', got {mode!r}")
    seconds = time.perf_counter() - t0
    metrics["rsum"] = sum(metrics.values())
    chance = chance_recall(un.text_to_image, un.n_images, ks)
    chance["rsum"] = sum(chance.values())
    return {
        **metrics,
        **extra,
        "chance": chance,
        "n_images": un.n_images,
        "n_texts": un.n_texts,
        "pairs_scored": n_pairs,
        "scoring_seconds": round(seconds, 3),
        "skipped_images": un.skipped_images,
        "empty_captions": un.empty_captions,
    }
