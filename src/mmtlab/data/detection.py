"""Detection data for training and evaluation: images of a COCO / LVIS file (data/formats/coco.py)
as square tensors with normalised boxes, and the base-only check.

Images are padded to a square (bottom and right, grey) and resized to the detector's size, so
aspect ratios are kept (OWL-ViT pads the same way) and a box maps back to pixels by one factor:
max(width, height). An unreadable image is skipped and counted, never a crash mid-epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mmtlab.data.formats.coco import DetectionImage, DetectionSet
from mmtlab.data.pairs import BAD_IMAGE_ERRORS

PAD_VALUE = 128


def square_image(path: Path, size: int) -> tuple[Tensor, float]:
    """uint8 [3, size, size]: the image padded to a square and resized; and the scale (size / side)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        side = max(im.size)
        if im.size != (side, side):
            canvas = Image.new("RGB", (side, side), (PAD_VALUE,) * 3)
            canvas.paste(im, (0, 0))
            im = canvas
        if side != size:
            im = im.resize((size, size), Image.BICUBIC)
        arr = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr, size / side


class DetectionBatches:
    """Batches of (images float [B, 3, S, S] in [-1, 1], targets [(class indices [M], boxes [M, 4]
    cxcywh in [0, 1])], the DetectionImages). `classes`: category id -> class index (the order of
    the query names); boxes of other categories are left out."""

    def __init__(self, data: DetectionSet, size: int, classes: dict[int, int] | None = None):
        self.data, self.size = data, size
        self.classes = classes or {c: i for i, c in enumerate(sorted(data.categories))}
        self.skipped: Counter = Counter()

    def load(self, items: Sequence[DetectionImage]):
        images, targets, kept = [], [], []
        for im in items:
            try:
                pixels, _ = square_image(im.path, self.size)
            except BAD_IMAGE_ERRORS:
                self.skipped["unreadable image"] += 1
                continue
            side = max(im.width, im.height)
            keep = np.array([int(c) in self.classes for c in im.labels], dtype=bool)
            b = torch.from_numpy(im.boxes[keep]).float() / side
            labels = torch.tensor([self.classes[int(c)] for c in im.labels[keep]], dtype=torch.long)
            cxcywh = torch.stack(
                [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1
            )
            images.append(pixels)
            targets.append((labels, cxcywh.reshape(-1, 4)))
            kept.append(im)
        x = torch.stack(images).float().div_(127.5).sub_(1.0) if images else torch.zeros(0, 3, self.size, self.size)
        return x, targets, kept

    def epochs(self, batch_size: int, seed: int) -> Iterator:
        """Shuffled batches forever (a new permutation per epoch, from `seed`)."""
        g = np.random.default_rng(seed)
        items = self.data.images
        while True:
            order = g.permutation(len(items))
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield self.load([items[j] for j in order[i : i + batch_size]])

    def in_order(self, batch_size: int) -> Iterator:
        items = self.data.images
        for i in range(0, len(items), batch_size):
            yield self.load(items[i : i + batch_size])


class NovelInTraining(ValueError):
    """A detection training set holds a category that is not base."""


def check_base_only(data: DetectionSet, query_ids: Sequence[int]) -> None:
    """Raise NovelInTraining unless every training category, every training box and every query is
    a base category of `data` (`set` absent or "base"): novel names and boxes never enter detection
    training."""

    def is_base(cid: int) -> bool:
        return data.categories.get(cid, {}).get("set", "base") == "base"

    bad_cats = sorted(c for c in data.categories if not is_base(c))
    bad_boxes = sum(int(not is_base(int(c))) for im in data.images for c in im.labels)
    bad_queries = sorted(c for c in query_ids if c not in data.categories or not is_base(c))
    if bad_cats or bad_boxes or bad_queries:
        raise NovelInTraining(
            f"{data.source}: detection training must see base categories only; non-base categories "
            f"{bad_cats[:10]}, {bad_boxes} of their boxes, queries {bad_queries[:10]}"
        )
