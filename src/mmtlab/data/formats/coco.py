"""COCO / LVIS detection JSON (`instances_<split>.json`): write a split's boxes, read any such file.

The format (cocodataset.org/#format-data, "Object Detection"):

    {"images":      [{"id", "file_name", "width", "height"}, ...],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd"}, ...],
     "categories":  [{"id", "name", ...}, ...]}

Boxes are [x, y, width, height] in pixels. LVIS uses the same layout; its categories carry a
`frequency` ("r" rare / "c" common / "f" frequent) and LVIS open-vocabulary detection trains on
"c" + "f" and reports AP on "r" (APr). emoji-scenes writes both that field and its own `set`
("base" / "novel" / "heldout", data/emoji_scenes/detection.py says what each means).

`read_coco` reads any such file with its images folder into DetectionImage lists for training and
evaluation; an annotation that cannot be used (no or malformed bbox, non-positive size, a box
wholly outside its image, an unknown image or category) is skipped and counted by reason, never a
crash; crowd annotations are kept out of training (COCO's evaluation ignores them itself).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmtlab.io import atomic_write_json

LVIS_FREQUENCY = {"base": "f", "novel": "r", "heldout": "r"}  # the categories an OVD benchmark calls rare


@dataclass
class DetectionImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # [n, 4] float32 (x1, y1, x2, y2) in pixels
    labels: np.ndarray  # [n] int64 category ids


@dataclass
class DetectionSet:
    images: list[DetectionImage]
    categories: dict[int, dict]  # id -> the category's JSON object
    source: Path
    skipped: Counter = field(default_factory=Counter)  # reason -> annotations (or images) skipped
    raw: dict | None = None  # the file's JSON, for pycocotools

    def ids_where(self, key: str, value) -> list[int]:
        """Category ids whose `key` field equals `value` (e.g. ("set", "novel"))."""
        return [i for i, c in self.categories.items() if c.get(key) == value]

    @property
    def n_boxes(self) -> int:
        return sum(len(im.labels) for im in self.images)


def xyxy_to_xywh(box) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_instances(images: list[dict], categories: list[dict], info: dict | None = None) -> dict:
    """A COCO detection dict. `images`: {"id", "file_name", "width", "height", "boxes" [[x1, y1, x2, y2]],
    "labels" [category id]}; `categories`: COCO category objects (id, name, extra fields kept)."""
    out_images, annotations = [], []
    for im in images:
        out_images.append({k: im[k] for k in ("id", "file_name", "width", "height")})
        for box, label in zip(im["boxes"], im["labels"], strict=True):
            xywh = xyxy_to_xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": im["id"],
                    "category_id": int(label),
                    "bbox": xywh,
                    "area": xywh[2] * xywh[3],
                    "iscrowd": 0,
                }
            )
    return {"info": info or {}, "images": out_images, "annotations": annotations, "categories": categories}


def write_coco(path: str | Path, instances: dict) -> None:
    atomic_write_json(path, instances)


def _bbox(ann: dict) -> list[float] | None:
    b = ann.get("bbox")
    if not isinstance(b, list | tuple) or len(b) != 4:
        return None
    try:
        v = [float(x) for x in b]
    except (TypeError, ValueError):
        return None
    return v if all(math.isfinite(x) for x in v) else None


def _file_name(im: dict) -> str | None:
    name = im.get("file_name") or (im.get("coco_url") or "").rsplit("/", 1)[-1]  # LVIS: coco_url only
    return name or None


def read_coco(annotations: str | Path, images: str | Path | None = None, check_files: bool = True) -> DetectionSet:
    """Read a COCO / LVIS detection file. `images`: the folder its file_names are relative to
    (default: the file's own folder). Images without a file (with `check_files`) or without a size
    are skipped and counted; so are unusable annotations (see the module docstring). Boxes are
    clipped to their image."""
    annotations = Path(annotations)
    root = Path(images) if images is not None else annotations.parent
    raw = json.loads(annotations.read_text(encoding="utf-8"))
    skipped: Counter = Counter()
    categories = {}
    for c in raw.get("categories", []):
        if isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str):
            categories[c["id"]] = c
        else:
            skipped["malformed category"] += 1
    by_id: dict[int, DetectionImage] = {}
    for im in raw.get("images", []):
        name = _file_name(im) if isinstance(im, dict) else None
        if name is None or not isinstance(im.get("id"), int):
            skipped["malformed image entry"] += 1
            continue
        path = root / name
        if check_files and not path.is_file():
            skipped["image file missing"] += 1
            continue
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, int | float) and isinstance(h, int | float) and w > 0 and h > 0):
            skipped["image without a size"] += 1
            continue
        by_id[im["id"]] = DetectionImage(im["id"], path, int(w), int(h), [], [])  # type: ignore[arg-type]
    for ann in raw.get("annotations", []):
        if not isinstance(ann, dict):
            skipped["malformed annotation"] += 1
            continue
        im = by_id.get(ann.get("image_id"))
        if im is None:
            skipped["annotation of an unknown or skipped image"] += 1
            continue
        if ann.get("category_id") not in categories:
            skipped["unknown category"] += 1
            continue
        if ann.get("iscrowd", 0):
            skipped["crowd (ignored in training)"] += 1
            continue
        b = _bbox(ann)
        if b is None:
            skipped["missing or malformed bbox"] += 1
            continue
        x, y, w, h = b
        if w <= 0 or h <= 0:
            skipped["box with non-positive size"] += 1
            continue
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, im.width), min(y + h, im.height)
        if x2 <= x1 or y2 <= y1:
            skipped["box outside its image"] += 1
            continue
        im.boxes.append((x1, y1, x2, y2))  # type: ignore[union-attr]
        im.labels.append(ann["category_id"])  # type: ignore[union-attr]
    out = []
    for im in by_id.values():
        im.boxes = np.asarray(im.boxes, dtype=np.float32).reshape(-1, 4)
        im.labels = np.asarray(im.labels, dtype=np.int64)
        out.append(im)
    return DetectionSet(out, categories, annotations, skipped, raw)
