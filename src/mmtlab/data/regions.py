"""Region inputs for BERT-style models: box proposals, toy-detector features, a disk cache, and the
`Regions` batch that models read instead of pixels.

Per image: `num_regions` proposal boxes (every gold box jittered, then random distractor boxes, in
a seeded random order), a detector feature vector per box, the box geometry (x1/W, y1/H, x2/W,
y2/H, area/WH) and the "gold" sprite of the annotated box each proposal covers (IoU >= 0.5). The
detector's class distribution is not stored: it is the detector's linear classifier applied to the
feature, so the cache keeps the classifier and computes distributions exactly on demand. The
global [IMG] region (mean of the regions) is built by the model, so replacing some region features
(masking, ablation with `mean_feature`) automatically changes [IMG] too.

Features of a dataset split are computed once and cached as safetensors under a key that hashes
the image bytes, the gold boxes and labels, the detector weights and the proposal parameters, so a
changed dataset or detector is never served stale features, and identical images in two dataset
variants (a noise variant reuses the images) share one cache file.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor

from mmtlab.batches import Regions  # noqa: F401  (defined with the other batch types)
from mmtlab.data.boxes import box_geometry, box_iou
from mmtlab.data.detector import CROP, ToyDetector, crop_boxes, load_detector
from mmtlab.io import honour_umask

FORMAT_VERSION = 1
JITTER_SHIFT = 0.08  # std of the centre shift, as a fraction of the box side
JITTER_SCALE = 0.12  # std of the log side-length change
DISTRACTOR_SIDE = (0.15, 0.6)  # distractor sides as fractions of the image side
MIN_SIDE = 4.0  # pixels
GOLD_IOU = 0.5  # a proposal "is" a gold object when it overlaps its box this much (Faster R-CNN)


def propose_boxes(gold, width: float, height: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` boxes [n, 4] (float pixels): each gold box (up to n) jittered, then random distractors,
    shuffled so the order says nothing about which is which."""
    gold = np.asarray(gold, dtype=np.float64).reshape(-1, 4)[:n]
    out = []
    for x1, y1, x2, y2 in gold:
        w, h = x2 - x1, y2 - y1
        cx = (x1 + x2) / 2 + rng.normal(0.0, JITTER_SHIFT * w)
        cy = (y1 + y2) / 2 + rng.normal(0.0, JITTER_SHIFT * h)
        w, h = w * np.exp(rng.normal(0.0, JITTER_SCALE)), h * np.exp(rng.normal(0.0, JITTER_SCALE))
        out.append(_clip(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, width, height))
    while len(out) < n:
        w = rng.uniform(*DISTRACTOR_SIDE) * width
        h = rng.uniform(*DISTRACTOR_SIDE) * height
        x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
        out.append(_clip(x1, y1, x1 + w, y1 + h, width, height))
    return np.asarray(out, dtype=np.float32)[rng.permutation(n)]


def _clip(x1, y1, x2, y2, width, height) -> list[float]:
    x1 = min(max(x1, 0.0), width - MIN_SIDE)
    y1 = min(max(y1, 0.0), height - MIN_SIDE)
    return [x1, y1, min(max(x2, x1 + MIN_SIDE), width), min(max(y2, y1 + MIN_SIDE), height)]


def proposal_rng(image_name: str, seed: int) -> np.random.Generator:
    """Proposals depend on (seed, image file name) only: not on order, split size or workers."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(image_name.encode("utf-8"))]))


def load_float_image(path: str | Path) -> Tensor:
    """Full-resolution float [3, H, W] in [-1, 1] (boxes are in the original pixel frame)."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div(127.5).sub(1.0)


# ------------------------------------------------------------------------------------- batches


# ------------------------------------------------------------------------------------ the set


@dataclass
class RegionSet:
    """Region inputs of every image of a split, in record order (what the cache file holds)."""

    features: Tensor  # [N, R, F] float32
    boxes: Tensor  # [N, R, 4] float32 pixels
    valid: Tensor  # [N, R] bool
    gold: Tensor  # [N, R] int64
    image_wh: Tensor  # [N, 2] float32
    ok: Tensor  # [N] bool: the image decoded
    classifier_weight: Tensor  # [C, F]
    classifier_bias: Tensor  # [C]
    class_sprite_ids: Tensor  # [C] int64, -1 = background
    mean_feature: Tensor  # [F] average region feature over the split (the ablation replacement)
    key: str = ""

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def num_regions(self) -> int:
        return self.features.shape[1]

    @property
    def feature_dim(self) -> int:
        return self.features.shape[2]

    @property
    def num_classes(self) -> int:
        return self.classifier_weight.shape[0]

    @property
    def bad(self) -> set[int]:
        return set(torch.nonzero(~self.ok).flatten().tolist())

    # The image-source protocol shared with pixels' ImageCache: get() then stack().
    def get(self, i: int) -> int | None:
        return i if bool(self.ok[i]) else None

    def stack(self, handles: Sequence[int]) -> Regions:
        return self.batch(torch.as_tensor(list(handles), dtype=torch.long))

    def batch(self, idx: Tensor) -> Regions:
        wh = self.image_wh[idx]
        boxes = self.boxes[idx]
        return Regions(
            features=self.features[idx],
            geometry=box_geometry(boxes, wh[:, 0, None], wh[:, 1, None]),
            mask=self.valid[idx],
            boxes=boxes,
            gold=self.gold[idx],
            classifier_weight=self.classifier_weight,
            classifier_bias=self.classifier_bias,
        )

    def subset(self, idx: Sequence[int]) -> RegionSet:
        i = torch.as_tensor(list(idx), dtype=torch.long)
        per_image = ("features", "boxes", "valid", "gold", "image_wh", "ok")
        return replace(self, **{k: getattr(self, k)[i] for k in per_image})

    def save(self, path: str | Path) -> None:
        tensors = {f.name: getattr(self, f.name).contiguous() for f in fields(self) if f.name != "key"}
        tensors["valid"], tensors["ok"] = tensors["valid"].to(torch.uint8), tensors["ok"].to(torch.uint8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"key": self.key, "format_version": str(FORMAT_VERSION)})
        honour_umask(tmp)  # safetensors writes 0600
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> RegionSet:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            key = (f.metadata() or {}).get("key", "")
        t = load_file(str(path))
        t["valid"], t["ok"] = t["valid"].bool(), t["ok"].bool()
        return cls(**t, key=key)


@torch.no_grad()
def extract_regions(
    records: Sequence,
    detector: ToyDetector,
    num_regions: int = 8,
    seed: int = 0,
    *,
    chunk: int = 64,
    progress: bool = True,
) -> RegionSet:
    """Proposals + detector features for every record (records need `.path`, optionally `.boxes`
    and `.labels`). Undecodable images are skipped, counted in `~ok`, and have no valid region."""
    from mmtlab.data.pairs import BAD_IMAGE_ERRORS
    from mmtlab.progress import track

    n, r, fdim = len(records), num_regions, detector.feature_dim
    features = torch.zeros(n, r, fdim)
    boxes = torch.zeros(n, r, 4)
    valid = torch.zeros(n, r, dtype=torch.bool)
    gold = torch.full((n, r), -1, dtype=torch.long)
    image_wh = torch.zeros(n, 2)
    ok = torch.zeros(n, dtype=torch.bool)
    crops, owners = [], []

    def flush():
        if crops:
            feats, _ = detector(torch.cat(crops))
            for k, i in enumerate(owners):
                features[i] = feats[k * r : (k + 1) * r]
            crops.clear()
            owners.clear()

    for i in track(range(n), "region features", enabled=progress):
        rec = records[i]
        try:
            img = load_float_image(rec.path)
        except BAD_IMAGE_ERRORS:
            continue
        h, w = img.shape[1:]
        gb = np.asarray(getattr(rec, "boxes", None) or [], dtype=np.float64).reshape(-1, 4)
        props = torch.from_numpy(propose_boxes(gb, w, h, r, proposal_rng(Path(rec.path).name, seed)))
        boxes[i], valid[i], ok[i], image_wh[i] = props, True, True, torch.tensor([w, h], dtype=torch.float32)
        labels = getattr(rec, "labels", None)
        if len(gb) and labels:
            iou = box_iou(props, torch.as_tensor(gb, dtype=torch.float32))
            best = iou.max(dim=1)
            sprite = torch.as_tensor(labels, dtype=torch.long)[best.indices]
            gold[i] = torch.where(best.values >= GOLD_IOU, sprite, torch.full_like(sprite, -1))
        crops.append(crop_boxes(img, props, CROP))
        owners.append(i)
        if len(owners) == chunk:
            flush()
    flush()
    real = valid & ok[:, None]
    mean = features[real].mean(0) if real.any() else torch.zeros(fdim)
    return RegionSet(
        features=features,
        boxes=boxes,
        valid=valid,
        gold=gold,
        image_wh=image_wh,
        ok=ok,
        classifier_weight=detector.classifier.weight.detach().clone(),
        classifier_bias=detector.classifier.bias.detach().clone(),
        class_sprite_ids=torch.as_tensor(detector.class_sprite_ids, dtype=torch.long),
        mean_feature=mean,
    )


def region_cache_key(records: Sequence, detector_digest: str, num_regions: int, seed: int) -> str:
    """Hash of everything the features depend on: image bytes, gold boxes/labels, image names (they
    seed the proposals), detector weights and proposal parameters."""
    h = hashlib.sha256()
    params = {
        "format": FORMAT_VERSION,
        "detector": detector_digest,
        "regions": num_regions,
        "seed": seed,
        "crop": CROP,
        "jitter": [JITTER_SHIFT, JITTER_SCALE],
        "distractor": DISTRACTOR_SIDE,
    }
    h.update(json.dumps(params, sort_keys=True).encode())
    for rec in records:
        p = Path(rec.path)
        h.update(p.name.encode("utf-8") + b"\0")
        try:
            h.update(hashlib.sha256(p.read_bytes()).digest())
        except OSError:
            h.update(b"<unreadable>")
        h.update(json.dumps([getattr(rec, "boxes", None), getattr(rec, "labels", None)]).encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """$MMTLAB_CACHE, else $XDG_CACHE_HOME/mmtlab, else ~/.cache/mmtlab; regions go in regions/."""
    root = os.environ.get("MMTLAB_CACHE")
    if root:
        return Path(root) / "regions"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mmtlab" / "regions"


def load_regions(
    records: Sequence,
    *,
    num_regions: int = 8,
    seed: int = 0,
    detector: str | Path | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> RegionSet:
    """Region inputs for `records` from the cache, computing and caching them on first use."""
    det = load_detector(detector)
    key = region_cache_key(records, det.digest, num_regions, seed)
    path = Path(cache_dir) if cache_dir else default_cache_dir()
    path = path / f"regions-{key[:20]}.safetensors"
    if path.exists():
        try:
            cached = RegionSet.load(path)
            if cached.key == key and len(cached) == len(records):
                return cached
        except (OSError, ValueError, RuntimeError):
            pass  # a corrupt or foreign file is recomputed and replaced
    regions = extract_regions(records, det, num_regions, seed, progress=progress)
    regions.key = key
    regions.save(path)
    return regions
