"""Does the model know the objects? CLIP-style zero-shot classification and controlled retrieval.

Both read only `encode_image` / `encode_text` (any model with a contrastive head) and images made on
the fly by data/emoji_scenes/singles.py, never the training images.

- Zero-shot classification (as CLIP and CLIP_benchmark do it): every class is the text embedding
  of its sprite name in several prompt templates, each template's embedding L2-normalised, the
  templates averaged, the average renormalised (prompt ensembling, Radford et al. 2021, Sec. 3.1.4).
  Each single-sprite image gets the class of the most similar embedding. The label set is every
  sprite the run could be asked about: its training vocabulary (seen) and the held-out sprites;
  accuracy is reported for images of seen and of held-out sprites, over all those classes and
  within their own subset, each next to chance.
- Controlled retrieval: groups of scenes that share one background (identical pixels) and one
  sprite count; each caption ranks only its group's images (t2i) and each image its group's
  captions (i2t). A model that reads backgrounds and counts but not objects scores chance
  (1 / group size); the same captions ranked against all images (`uncontrolled_t2i_r1`) show how
  much ordinary retrieval leans on the background.

Ties count as a random tie-break would in expectation (the correct item shares its rank evenly
with the candidates that score the same), so a model that cannot tell candidates apart scores
exactly chance rather than zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mmtlab.data.emoji_scenes.singles import controlled_group, single_sprite
from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
from mmtlab.data.prompts import TEMPLATES, prompts
from mmtlab.progress import track

MIN_PER_CLASS = 4  # single-sprite images per class at least, and enough for MIN_IMAGES per subset
MIN_IMAGES = 1000  # a small vocabulary gets more images per sprite, so its accuracy is not noisier

EncodeImages = Callable[[Tensor], Tensor]  # float [B, 3, H, W] in [-1, 1] -> [B, E]
EncodeTexts = Callable[[list[str]], Tensor]  # captions -> [B, E]


def model_encoders(model, tokenizer) -> tuple[EncodeImages, EncodeTexts]:
    """`encode_image` / `encode_text` of a model with a contrastive head, as the two callables."""

    def images(x: Tensor) -> Tensor:
        return model.encode_image(x)

    def texts(captions: list[str]) -> Tensor:
        tokens, mask = tokenizer(captions)
        return model.encode_text(tokens, mask)

    return images, texts


def to_batch(images: Sequence[Image.Image]) -> Tensor:
    """PIL RGB images -> float [B, 3, H, W] in [-1, 1] (the training pipeline's scaling)."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


@torch.no_grad()
def embed_texts(encode: EncodeTexts, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    out = [encode(list(texts[i : i + batch_size])).float() for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def embed_images(
    encode: EncodeImages, images: Sequence[Image.Image], batch_size: int = 256, progress: bool = False, what: str = ""
) -> Tensor:
    starts = range(0, len(images), batch_size)
    out = [
        encode(to_batch(images[i : i + batch_size])).float()
        for i in track(starts, f"encoding {what} images", enabled=progress)
    ]
    return torch.cat(out)


def class_embeddings(
    encode: EncodeTexts, names: Sequence[str], templates: Sequence[str] = TEMPLATES, batch_size: int = 256
) -> Tensor:
    """Prompt ensembling: [C, E] unit vectors, the renormalised mean over `templates` of each class
    name's normalised text embeddings."""
    texts = prompts(names, templates)
    emb = F.normalize(embed_texts(encode, texts, batch_size), dim=-1)
    return F.normalize(emb.view(len(names), len(templates), -1).mean(1), dim=-1)


def expected_hits(scores: Tensor, correct: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """P(correct candidate in the top k) per row of `scores` [N, C] under a random tie-break.

    `correct` [N]: the right column of each row; `valid` [N, C]: the candidates of each row (default
    all). With g candidates scoring higher and e others scoring the same, the correct one's rank is
    uniform over g+1 .. g+e+1."""
    s = torch.nan_to_num(scores.double(), nan=-torch.inf)
    if valid is not None:
        s = s.masked_fill(~valid, -torch.inf)
    rows = torch.arange(len(s))
    true = s[rows, correct]
    greater = (s > true[:, None]).sum(1)
    equal = (s == true[:, None]).sum(1) - 1
    return ((k - greater).double() / (equal + 1).double()).clamp(0.0, 1.0)


def classification_metrics(
    image_emb: Tensor, labels: Tensor, class_emb: Tensor, columns: Sequence[int] | None = None, ks=(1, 5)
) -> dict[str, float]:
    """Top-k accuracy (%) of images [N, E] with true class index `labels` [N] into `class_emb` [C, E],
    the candidates restricted to `columns` if given (labels must lie in them), with chance."""
    scores = image_emb @ class_emb.T
    n_cls = scores.shape[1]
    valid = None
    if columns is not None:
        valid = torch.zeros(n_cls, dtype=torch.bool)
        valid[list(columns)] = True
        n_cls = int(valid.sum())
        valid = valid.expand_as(scores)
    out: dict[str, float] = {"n_images": len(labels), "n_classes": n_cls}
    for k in ks:
        out[f"top{k}"] = 100.0 * expected_hits(scores, labels, k, valid).mean().item()
        out[f"chance_top{k}"] = 100.0 * min(1.0, k / n_cls)
    return out


def grouped_recall(scores: Tensor, groups: Tensor) -> dict[str, float]:
    """R@1 (%) of square `scores` [N images, N captions] (caption j belongs to image j) when every
    query ranks only the candidates of its own group."""
    same = groups[:, None] == groups[None, :]
    idx = torch.arange(len(groups))
    t2i = expected_hits(scores.T, idx, 1, same).mean().item()
    i2t = expected_hits(scores, idx, 1, same).mean().item()
    sizes = torch.bincount(groups)[groups].double()
    return {"t2i_r1": 100.0 * t2i, "i2t_r1": 100.0 * i2t, "chance_r1": 100.0 * (1.0 / sizes).mean().item()}


def zero_shot_classification(
    encode_images: EncodeImages,
    encode_texts: EncodeTexts,
    seen: Sequence[int],
    heldout: Sequence[int],
    *,
    seed: int = 0,
    per_class: int | None = None,
    image_size: int = 64,
    templates: Sequence[str] = TEMPLATES,
    batch_size: int = 256,
    atlas: SpriteAtlas | None = None,
    progress: bool = False,
) -> dict:
    atlas = atlas or SpriteAtlas.load()
    classes = sorted(set(seen) | set(heldout))
    column = {c: j for j, c in enumerate(classes)}
    class_emb = class_embeddings(encode_texts, [atlas.names[c] for c in classes], templates, batch_size)
    out: dict = {"templates": list(templates), "n_classes": len(classes)}
    for name, ids in (("seen", seen), ("heldout", heldout)):
        if not ids:
            continue
        k_per_class = per_class or max(MIN_PER_CLASS, -(-MIN_IMAGES // len(ids)))
        out[f"{name}_per_class"] = k_per_class
        items = [(c, k) for c in ids for k in range(k_per_class)]
        images = [
            single_sprite(seed, c, k, image_size=image_size, atlas=atlas).image
            for c, k in track(items, f"rendering {name} single sprites", enabled=progress)
        ]
        emb = F.normalize(embed_images(encode_images, images, batch_size, progress, name), dim=-1)
        labels = torch.tensor([column[c] for c, _ in items])
        out[name] = classification_metrics(emb, labels, class_emb)
        out[f"{name}_within"] = classification_metrics(emb, labels, class_emb, [column[c] for c in ids])
    return out


def controlled_retrieval(
    encode_images: EncodeImages,
    encode_texts: EncodeTexts,
    vocab: Sequence[int],
    *,
    seed: int = 0,
    groups: int = 125,
    group_size: int = 8,
    image_size: int = 64,
    batch_size: int = 256,
    atlas: SpriteAtlas | None = None,
    progress: bool = False,
) -> dict:
    atlas = atlas or SpriteAtlas.load()
    items = [
        it
        for g in track(range(groups), "rendering controlled groups", enabled=progress)
        for it in controlled_group(seed, g, vocab, group_size=group_size, image_size=image_size, atlas=atlas)
    ]
    img = F.normalize(embed_images(encode_images, [it.image for it in items], batch_size, progress, "grouped"), dim=-1)
    txt = F.normalize(embed_texts(encode_texts, [it.caption for it in items], batch_size), dim=-1)
    scores = img @ txt.T
    group_of = torch.tensor([it.group for it in items])
    count_of = torch.tensor([it.count for it in items])
    idx = torch.arange(len(items))
    out: dict = {"groups": groups, "group_size": group_size, **grouped_recall(scores, group_of)}
    out["uncontrolled_t2i_r1"] = 100.0 * expected_hits(scores.T, idx, 1).mean().item()
    out["uncontrolled_chance_r1"] = 100.0 / len(items)
    by_count = {}
    for n in sorted(set(count_of.tolist())):
        keep = count_of == n
        sub = grouped_recall(scores[keep][:, keep], group_of[keep])
        by_count[str(n)] = {"n_images": int(keep.sum()), **sub}
    out["by_count"] = by_count
    return out


def evaluate_zeroshot(
    model,
    tokenizer,
    seen: Sequence[int],
    heldout: Sequence[int],
    *,
    seed: int = 0,
    per_class: int | None = None,
    groups: int = 125,
    group_size: int = 8,
    image_size: int = 64,
    batch_size: int = 256,
    progress: bool = True,
) -> dict:
    """Both evaluations of `model` (a contrastive head is needed): classification of single sprites
    of the `seen` and `heldout` vocabularies, controlled retrieval with scenes of `seen` sprites."""
    enc_img, enc_txt = model_encoders(model, tokenizer)
    common = dict(seed=seed, image_size=image_size, batch_size=batch_size, progress=progress)
    cls = zero_shot_classification(enc_img, enc_txt, seen, heldout, per_class=per_class, **common)
    ctl = controlled_retrieval(enc_img, enc_txt, seen, groups=groups, group_size=group_size, **common)
    flat = {  # one level, for study tables (zeroshot.seen_top1, ...)
        f"{name}_{m}": cls[name][m]
        for name in ("seen", "heldout", "seen_within", "heldout_within")
        if name in cls
        for m in ("top1", "top5", "chance_top1")
    }
    flat.update(controlled_t2i_r1=ctl["t2i_r1"], controlled_i2t_r1=ctl["i2t_r1"], controlled_chance_r1=ctl["chance_r1"])
    return {"seed": seed, **flat, "classification": cls, "controlled": ctl}


def run_vocabularies(data_root) -> tuple[list[int], list[int], str]:
    """(seen, held-out) sprite ids of the emoji-scenes build a run trained on, from its meta.json;
    without one (another dataset) the atlas defaults: every non-held-out sprite, and the held-out."""
    import json
    from pathlib import Path

    from mmtlab.data.emoji_scenes.scenes import default_vocabulary

    meta_path = Path(data_root) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        return list(meta["vocabulary"]["ids"]), list(meta["heldout_vocabulary"]["ids"]), str(meta_path)
    except (OSError, ValueError, KeyError):
        atlas = SpriteAtlas.load()
        seen, _ = default_vocabulary(atlas, "pretrain")
        return seen, atlas.heldout_ids(), "atlas defaults (no emoji-scenes meta.json)"
