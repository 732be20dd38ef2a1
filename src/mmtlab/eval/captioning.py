"""Captioning evaluation: generate one caption per image and score it against the references with
BLEU-4 and CIDEr-D (pycocoevalcap's Bleu and Cider scorers, the COCO caption protocol). A simple
Python tokenizer (lower-case words, punctuation dropped, as in the Karpathy splits) replaces the
Java PTBTokenizer. Scores are reported x100, as in papers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mmtlab.data.formats.karpathy import tokenize
from mmtlab.data.pairs import ImageCache
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.progress import track


def normalize(text: str) -> str:
    return " ".join(tokenize(text))


def decode_continuations(tokenizer: TextTokenizer, ids: Tensor, prompt_len: int) -> list[str]:
    """The generated part of each row as text (special tokens dropped)."""
    return [tokenizer.decode(row[prompt_len:]) for row in ids]


@torch.no_grad()
def caption_images(model, tokenizer: TextTokenizer, images: Tensor, **generation) -> list[str]:
    """Captions for float images [B, 3, H, W] in [-1, 1]; `generation`: see ImageTextDecoder.generate."""
    model.eval()
    return decode_continuations(tokenizer, model.generate(images, **generation), 1)


def caption_scores(candidates: dict[int, str], references: dict[int, list[str]]) -> dict[str, float]:
    """BLEU-1..4 and CIDEr-D (x100) of one candidate per id against its references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    res = {i: [normalize(c)] for i, c in candidates.items()}
    gts = {i: [normalize(r) for r in references[i]] for i in candidates}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu{n}": 100.0 * b for n, b in enumerate(bleu, 1)}, "cider": 100.0 * float(cider)}


def evaluate_captioning(
    model,
    tokenizer: TextTokenizer,
    records: Sequence,
    *,
    batch_size: int = 64,
    max_images: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    examples: int = 8,
    source=None,
    **generation,
) -> dict:
    """Caption every decodable image of `records` (the first `max_images`) and score it.
    `source` gives the model's inputs per record (data.loader.image_source: pixels or video clips)."""
    model.eval()
    records = records[:max_images] if max_images else records
    cache = ImageCache(records, model.cfg.image.size, keep=False) if source is None else source
    candidates: dict[int, str] = {}
    pending: list[tuple[int, Tensor]] = []

    def flush():
        if pending:
            images = cache.stack([im for _, im in pending]).to(device)
            for (ri, _), text in zip(pending, caption_images(model, tokenizer, images, **generation)):
                candidates[ri] = text
            pending.clear()

    for ri in track(range(len(records)), "captioning", enabled=progress):
        img = cache.get(ri)
        if img is not None:
            pending.append((ri, img))
        if len(pending) == batch_size:
            flush()
    flush()
    references = {ri: [c for c in records[ri].captions if c and c.strip()] for ri in candidates}
    candidates = {ri: c for ri, c in candidates.items() if references[ri]}
    if not candidates:
        raise ValueError("nothing to evaluate: no decodable image with a reference caption")
    return {
        **caption_scores(candidates, references),
        "n_images": len(candidates),
        "skipped_images": len(cache.bad),
        "mean_length_words": sum(len(tokenize(c)) for c in candidates.values()) / len(candidates),
        "examples": [
            {"image": str(records[ri].path), "caption": candidates[ri], "references": references[ri]}
            for ri in list(candidates)[:examples]
        ],
    }
