"""Cross-modal input ablation (Frank, Bugliarello & Elliott 2021): does a model use the other modality?

For every grounded phrase (a caption span with at least one annotated box, read from Flickr30k
Entities files):

  vision-for-language  the phrase's tokens are masked and the MLM loss on them (bits per token) is
                       measured with the visual input intact ("none"), with the regions aligned
                       to the phrase's boxes ablated ("object") and with every region ablated
                       ("all"). Ablated region features become the split's average region feature
                       (not zeros: zeros are far from anything the model saw), and the global
                       [IMG] region, the mean of the regions, follows because the model computes
                       it. Patch models: the patches overlapping a box get the split's average
                       patch embedding.
  language-for-vision  the regions aligned to the phrase are masked as in MRM pretraining; the
                       one with the highest IoU is the target, and the masked-region loss there
                       (bits) is measured with the text intact ("none"), the phrase's tokens
                       masked ("phrase") and every token masked ("all"). Two targets: the
                       detector's class distribution (KL, "silver", the labels models train on)
                       and the annotated class (cross-entropy, "gold": the sprite of the
                       annotated box the target region covers with IoU >= 0.5, the detector's own
                       training criterion; targets covering none have no gold label). Comparing
                       the two shows how much the detector's label noise moves the conclusion.
                       Vision-for-language has no such choice: its targets are the caption's words.

A region is aligned with a phrase when its overlap with any of the phrase's boxes exceeds a
threshold; overlap is IoT (intersection over the annotated box, the paper's default) or IoU. If a
model uses the other modality, ablating it raises the loss; "all" shows how much, "object" or
"phrase" whether the model uses the aligned part. The paper found vision used for language far
more than language for vision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mmtlab.data.boxes import box_intersection, box_iot, box_iou
from mmtlab.data.formats.flickr30k_entities import EntitiesSet
from mmtlab.data.pairs import centre_crop, image_size
from mmtlab.data.regions import Regions, RegionSet
from mmtlab.objectives.mlm import special_token_ids
from mmtlab.objectives.mrm import hide_regions, mrm_kl_loss
from mmtlab.progress import track

OVERLAPS = {"iot": box_iot, "iou": box_iou}
VISION_ABLATIONS = ("none", "object", "all")
TEXT_ABLATIONS = ("none", "phrase", "all")
LN2 = math.log(2.0)


def bits(nats: Tensor | float) -> Tensor | float:
    """Nats -> bits (divide by ln 2)."""
    return nats / LN2


@dataclass(frozen=True)
class GroundedPhrase:
    record: int  # index of the image in the split's records (and its region set)
    caption: str
    start: int  # character span of the phrase in the caption
    end: int
    boxes: tuple[tuple[float, float, float, float], ...]  # the phrase's annotated boxes (pixels)


def grounded_phrases(records: Sequence, entities: EntitiesSet) -> tuple[list[GroundedPhrase], dict[str, int]]:
    """Every phrase with at least one box, for the images of `records` (matched by file stem), in
    record order. Also counts what was left out."""
    out, counts = [], {"images_without_annotations": 0, "phrases_without_boxes": 0}
    for i, r in enumerate(records):
        img = entities.images.get(Path(r.path).stem)
        if img is None:
            counts["images_without_annotations"] += 1
            continue
        for sent in img.sentences:
            for p in sent.phrases:
                if not p.boxes:
                    counts["phrases_without_boxes"] += 1
                    continue
                out.append(GroundedPhrase(i, sent.text, p.start, p.end, p.boxes))
    return out, counts


def subsample(phrases: list[GroundedPhrase], n: int | None, seed: int) -> list[GroundedPhrase]:
    """`n` phrases drawn without replacement (seeded), kept in their original order."""
    if n is None or n >= len(phrases):
        return phrases
    keep = np.sort(np.random.default_rng(seed).permutation(len(phrases))[:n])
    return [phrases[i] for i in keep]


# ------------------------------------------------------------------------------------ alignment


def align(region_boxes: Tensor, phrase_boxes: Tensor, method: str = "iot", threshold: float = 0.5) -> Tensor:
    """[R] True for the regions whose overlap with any phrase box exceeds `threshold`.
    iot: intersection over the phrase box's area; iou: intersection over union."""
    if method not in OVERLAPS:
        raise ValueError(f"alignment {method!r}: choose one of {', '.join(OVERLAPS)}")
    return (OVERLAPS[method](region_boxes, phrase_boxes) > threshold).any(dim=1)


def aligned_regions(
    regions: Regions, phrases: Sequence[GroundedPhrase], method: str, threshold: float
) -> tuple[Tensor, Tensor]:
    """For a batch (regions[i] is the image of phrases[i]): [B, R] aligned regions, and [B] the index of
    the aligned region with the highest IoU with a phrase box (-1 when none is aligned)."""
    n, r = regions.mask.shape
    aligned = torch.zeros(n, r, dtype=torch.bool)
    target = torch.full((n,), -1, dtype=torch.long)
    for i, p in enumerate(phrases):
        pb = torch.tensor(p.boxes, dtype=torch.float32)
        a = align(regions.boxes[i], pb, method, threshold) & regions.mask[i]
        aligned[i] = a
        if a.any():
            iou = box_iou(regions.boxes[i], pb).max(dim=1).values
            target[i] = int(torch.where(a, iou, torch.full_like(iou, -1.0)).argmax())
    return aligned, target


def overlapping_patches(grid: int, width: float, height: float, boxes: Sequence) -> Tensor:
    """[grid, grid] True for the patches of a grid x grid split of a width x height image that
    overlap any of `boxes` (pixels) by a positive area."""
    t = torch.arange(grid, dtype=torch.float32)
    x1, y1 = (t * width / grid), (t * height / grid)
    cells = torch.stack(
        torch.broadcast_tensors(x1[None, :], y1[:, None], x1[None, :] + width / grid, y1[:, None] + height / grid),
        dim=-1,
    ).reshape(-1, 4)
    inter = box_intersection(cells, torch.as_tensor(boxes, dtype=torch.float32))
    return (inter > 0).any(dim=1).reshape(grid, grid)


def boxes_in_crop(boxes: Sequence, width: int, height: int, size: int) -> Tensor:
    """[N, 4] `boxes` (pixels of a width x height image) in the pixels of the size x size centre
    crop the model reads (data/pairs.py: load_image); parts in the cropped-away margin fall outside
    [0, size] and so overlap no patch."""
    (w, h), (left, top) = centre_crop(width, height, size)
    scale = torch.tensor([w / width, h / height, w / width, h / height])
    return torch.tensor(boxes, dtype=torch.float32) * scale - torch.tensor([left, top, left, top], dtype=torch.float32)


# --------------------------------------------------------------------------------- replacement


def replace_regions(regions: Regions, where: Tensor, mean_feature: Tensor) -> Regions:
    """Regions whose features at `where` [B, R] are the average feature. The model recomputes the
    global [IMG] region from the new features."""
    fill = mean_feature.to(regions.features.dtype).expand_as(regions.features)
    return replace(regions, features=torch.where(where[..., None], fill, regions.features))


@contextmanager
def patches_replaced(model, where: Tensor, mean_embedding: Tensor):
    """Within the block, the patch projection's output at `where` [B, g, g] is the average patch
    embedding (positions are added after, as for a region's kept box). A hook on the projection
    keeps the model free of a code path only this diagnostic would use."""

    def hook(_module, _args, out: Tensor) -> Tensor:
        return torch.where(where[:, None].to(out.device), mean_embedding.to(out)[None, :, None, None], out)

    handle = model.image_embed.proj.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def mean_patch_embedding(model, images: Tensor, batch_size: int = 256) -> Tensor:
    """[D]: the patch projection averaged over every patch of `images` [N, 3, H, W]."""
    total, count = None, 0
    for s in range(0, len(images), batch_size):
        out = model.image_embed.proj(images[s : s + batch_size])  # [B, D, g, g]
        part = out.sum(dim=(0, 2, 3))
        total = part if total is None else total + part
        count += out.shape[0] * out.shape[2] * out.shape[3]
    return total / count


# ----------------------------------------------------------------------------------- inputs


class VisualInputs:
    """What the model reads for a batch of phrases, intact or with some of it ablated. `source`:
    a RegionSet, or an ImageCache for patch models; None for a text-only model."""

    def __init__(self, model, source, records, method: str, threshold: float, batch_size: int = 256):
        self.model, self.source, self.method, self.threshold = model, source, method, threshold
        self.regions = isinstance(source, RegionSet)
        self.text_only = source is None
        if not self.regions and not self.text_only:
            decodable = [i for i in range(len(records)) if source.get(i) is not None]
            self.size = {i: image_size(records[i].path) for i in decodable}
            pixels = source.stack([source.get(i) for i in decodable])
            self.mean_patch = mean_patch_embedding(model, pixels, batch_size)
            self.grid = model.image_embed.grid

    def usable(self, record: int) -> bool:
        if self.text_only:
            return True
        if self.regions:
            return bool(self.source.ok[record])
        return record in self.size

    def batch(self, phrases: Sequence[GroundedPhrase]):
        """The intact inputs and [B, ...] the parts aligned with each phrase (regions or patches)."""
        if self.text_only:
            return None, None
        idx = torch.tensor([p.record for p in phrases], dtype=torch.long)
        if self.regions:
            regions = self.source.batch(idx)
            return regions, aligned_regions(regions, phrases, self.method, self.threshold)[0]
        pixels = self.source.stack([self.source.get(p.record) for p in phrases])
        side = self.source.size  # the model reads a side x side centre crop of each image
        where = torch.stack(
            [
                overlapping_patches(self.grid, side, side, boxes_in_crop(p.boxes, *self.size[p.record], side))
                for p in phrases
            ]
        )
        return pixels, where

    @contextmanager
    def ablated(self, images, aligned: Tensor | None, ablation: str):
        """Yields the model input with nothing / the aligned part / everything ablated."""
        if self.text_only or ablation == "none":
            yield images
            return
        if self.regions:
            where = aligned if ablation == "object" else images.mask
            yield replace_regions(images, where, self.source.mean_feature)
            return
        where = aligned if ablation == "object" else torch.ones_like(aligned)
        with patches_replaced(self.model, where, self.mean_patch):
            yield images


def ablate_text(tokens: Tensor, mask: Tensor, inside: Tensor, ablation: str, text_cfg) -> Tensor:
    """Token ids with nothing, the phrase (`inside` [B, L]) or every word replaced by [MASK];
    [CLS], [SEP] and padding stay, so only the caption's length survives "all"."""
    t = text_cfg
    if ablation == "none":
        return tokens
    if ablation == "phrase":
        return tokens.masked_fill(inside, t.mask_id)
    words = mask & ~torch.isin(tokens, torch.tensor(special_token_ids(t)))
    return tokens.masked_fill(words, t.mask_id)


# ------------------------------------------------------------------------------- the diagnostic


@torch.no_grad()
def vision_for_language(
    model, tokenizer, phrases: Sequence[GroundedPhrase], inputs: VisualInputs, batch_size: int, progress: bool
) -> dict[str, np.ndarray]:
    """Per phrase: MLM loss in bits summed over its masked tokens, per visual ablation, the token
    count, and how many regions/patches the object ablation replaced."""
    t = model.cfg.text
    n = len(phrases)
    out = {a: np.zeros(n) for a in VISION_ABLATIONS}
    out["tokens"], out["aligned"] = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for s in track(range(0, n, batch_size), "vision-for-language", enabled=progress):
        chunk = phrases[s : s + batch_size]
        tokens, mask, inside = tokenizer.with_spans([p.caption for p in chunk], [(p.start, p.end) for p in chunk])
        masked = ablate_text(tokens, mask, inside, "phrase", t)
        owner = inside.nonzero()[:, 0]
        images, aligned = inputs.batch(chunk)
        for a in VISION_ABLATIONS:
            with inputs.ablated(images, aligned, a) as imgs:
                states = model(images=imgs, tokens=masked, text_mask=mask)["text"]
            nats = F.cross_entropy(model.mlm_logits(states[inside]).float(), tokens[inside], reduction="none")
            out[a][s : s + len(chunk)] = bits(torch.zeros(len(chunk)).index_add_(0, owner, nats)).numpy()
        out["tokens"][s : s + len(chunk)] = inside.sum(1).numpy()
        if aligned is not None:
            out["aligned"][s : s + len(chunk)] = aligned.flatten(1).sum(1).numpy()
    return out


@torch.no_grad()
def language_for_vision(
    model, tokenizer, phrases: Sequence[GroundedPhrase], regions: RegionSet, method: str, threshold: float,
    batch_size: int, progress: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per phrase (all with an aligned region): the masked-region loss in bits at the target region
    per text ablation, against the detector's distribution (silver, KL) and the annotated class
    (gold, cross-entropy; NaN where the target region covers no annotated object the detector
    knows). NaN too for phrases without an aligned region or without tokens (cut off by the caption
    length limit). Also whether the detector's top class is the gold one, and the token count."""
    t = model.cfg.text
    head = model.mrm
    n = len(phrases)
    out = {f"{lab}_{a}": np.full(n, np.nan) for lab in ("silver", "gold") for a in TEXT_ABLATIONS}
    out["detector_correct"] = np.full(n, np.nan)
    out["tokens"] = np.zeros(n, dtype=np.int64)
    class_of_sprite = {int(s): c for c, s in enumerate(regions.class_sprite_ids.tolist()) if s >= 0}
    for s in track(range(0, n, batch_size), "language-for-vision", enabled=progress):
        chunk = phrases[s : s + batch_size]
        tokens, mask, inside = tokenizer.with_spans([p.caption for p in chunk], [(p.start, p.end) for p in chunk])
        clean = regions.batch(torch.tensor([p.record for p in chunk], dtype=torch.long))
        aligned, target = aligned_regions(clean, chunk, method, threshold)
        rows = torch.arange(len(chunk))
        # As in MRM pretraining (and the paper): every aligned region is hidden, not just the target,
        # so the target's features cannot be copied from an overlapping region.
        hidden = hide_regions(clean, aligned)
        detector = clean.detector_logits()[rows, target]
        gold_sprite = clean.gold[rows, target].tolist()
        gold = torch.tensor([class_of_sprite.get(g, -1) for g in gold_sprite], dtype=torch.long)
        # Phrases without an aligned region have no target; phrases cut off by the caption length
        # limit have no tokens, so "phrase" would mask nothing (vision-for-language drops them too).
        found = (target >= 0) & inside.any(1)
        has_gold = found & (gold >= 0)
        for a in TEXT_ABLATIONS:
            text = ablate_text(tokens, mask, inside, a, t)
            states = model(images=hidden, tokens=text, text_mask=mask)["image"]
            logits = head.classes(head.transform(states[rows, target + 1]))
            kl = mrm_kl_loss(logits, detector, reduction="none")
            ce = F.cross_entropy(logits.float(), gold.clamp_min(0), reduction="none")
            out[f"silver_{a}"][s : s + len(chunk)] = torch.where(found, bits(kl), torch.nan).numpy()
            out[f"gold_{a}"][s : s + len(chunk)] = torch.where(has_gold, bits(ce), torch.nan).numpy()
        correct = (detector.argmax(-1) == gold).float()
        out["detector_correct"][s : s + len(chunk)] = torch.where(has_gold, correct, torch.nan).numpy()
        out["tokens"][s : s + len(chunk)] = inside.sum(1).numpy()
    return out


def bootstrap(
    values: dict[str, np.ndarray], weights: np.ndarray | None, n: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """Mean of each array over phrases (`weights`: a ratio of sums, e.g. bits per token) with a
    percentile 95% CI from `n` bootstrap resamples of the phrases; the same resamples for every
    array, so differences between conditions are paired. Also each condition minus the first."""
    names = list(values)
    m = len(next(iter(values.values())))
    w = np.ones(m) if weights is None else weights.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, m, size=(n, m))
    stacked = np.stack([values[k] for k in names])  # [C, m]
    point = (stacked * w).sum(1) / w.sum()
    boot = (stacked[:, idx] * w[idx]).sum(2) / w[idx].sum(1)  # [C, n]
    out = {}
    for c, k in enumerate(names):
        out[k] = {"bits": float(point[c]), "ci95": [float(x) for x in np.percentile(boot[c], [2.5, 97.5])]}
    for c, k in enumerate(names[1:], 1):
        d = boot[c] - boot[0]
        out[f"{k}_minus_{names[0]}"] = {
            "bits": float(point[c] - point[0]),
            "ci95": [float(x) for x in np.percentile(d, [2.5, 97.5])],
        }
    return out


def run_ablation(
    model,
    tokenizer,
    phrases: Sequence[GroundedPhrase],
    inputs: VisualInputs,
    *,
    batch_size: int = 256,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Both directions of the diagnostic for whatever heads the model has; see the module doc.
    Regions align with phrases by `inputs`' method and threshold in both directions."""
    model.eval()
    started = time.perf_counter()
    usable = [p for p in phrases if inputs.usable(p.record)]
    result: dict = {"n_phrases": len(usable), "skipped_undecodable_images": len(phrases) - len(usable)}
    v4l = l4v = None
    if model.mlm is not None:
        v = vision_for_language(model, tokenizer, usable, inputs, batch_size, progress)
        keep = v["tokens"] > 0  # a phrase cut off by the caption length limit has no tokens
        tokens = v["tokens"][keep]
        v4l = {
            "unit": "bits per masked phrase token",
            "n_phrases": int(keep.sum()),
            "n_tokens": int(tokens.sum()),
            "phrases_truncated": int((~keep).sum()),
            **bootstrap({a: v[a][keep] / np.maximum(tokens, 1) for a in VISION_ABLATIONS}, tokens, n_bootstrap, seed),
        }
        if not inputs.text_only:
            v4l["phrases_with_aligned_input"] = float((v["aligned"][keep] > 0).mean()) if keep.any() else 0.0
            v4l["mean_ablated_per_phrase"] = float(v["aligned"][keep].mean()) if keep.any() else 0.0
    if model.mrm is not None and inputs.regions:
        lv = language_for_vision(
            model, tokenizer, usable, inputs.source, inputs.method, inputs.threshold, batch_size, progress
        )  # fmt: skip
        have = ~np.isnan(lv["silver_none"])
        gold = have & ~np.isnan(lv["gold_none"])
        truncated = lv["tokens"] == 0
        l4v = {
            "unit": "bits per masked region",
            "n_phrases": int(have.sum()),
            "phrases_without_aligned_region": int((~have & ~truncated).sum()),
            "phrases_truncated": int(truncated.sum()),
            "silver": bootstrap({a: lv[f"silver_{a}"][have] for a in TEXT_ABLATIONS}, None, n_bootstrap, seed)
            if have.any()
            else None,
            "n_gold": int(gold.sum()),
            "gold": bootstrap({a: lv[f"gold_{a}"][gold] for a in TEXT_ABLATIONS}, None, n_bootstrap, seed)
            if gold.any()
            else None,
            "detector_top1_is_gold": float(np.nanmean(lv["detector_correct"][gold])) if gold.any() else None,
        }
    seconds = time.perf_counter() - started
    result.update(
        vision_for_language=v4l,
        language_for_vision=l4v,
        seconds=round(seconds, 2),
        phrases_per_second=round(len(usable) / seconds, 1) if seconds > 0 else None,
    )
    return result


def summary(result: dict) -> dict[str, float]:
    """Flat numbers (study metrics), in bits: v4l_<none|object|all>, l4v_<none|phrase|all> (silver)
    and l4v_gold_<...>, each ablation's increase over none as <name>_increase; text_only when a
    baseline was evaluated."""
    flat = {}
    v = result.get("vision_for_language")
    if v:
        flat.update({f"v4l_{a}": v[a]["bits"] for a in VISION_ABLATIONS})
        flat.update({f"v4l_{a}_increase": v[f"{a}_minus_none"]["bits"] for a in VISION_ABLATIONS[1:]})
    lv = result.get("language_for_vision")
    if lv:
        for lab, prefix in (("silver", "l4v"), ("gold", "l4v_gold")):
            if lv[lab]:
                flat.update({f"{prefix}_{a}": lv[lab][a]["bits"] for a in TEXT_ABLATIONS})
                flat.update({f"{prefix}_{a}_increase": lv[lab][f"{a}_minus_none"]["bits"] for a in TEXT_ABLATIONS[1:]})
    base = result.get("text_only_baseline")
    if base:
        flat["text_only"] = base["bits"]
    return flat
