"""emoji-scenes as an open-vocabulary detection benchmark, in COCO format.

Every build writes `instances_<split>.json` for its splits (categories: the build's vocabulary with
`set` "seen" and the held-out sprites with `set` "heldout"). `build_detection` adds a detection
benchmark under `ROOT/detection/` at a higher resolution (128 px by default: an 8 x 8 grid of 16-px
patches where pretraining saw 4 x 4):

    detection/meta.json
    detection/images/{split}/{split}_{index:07d}.png
    detection/instances_{detect_train,detect_val,detect_test}.json

The category `set` says what a model has seen (LVIS open-vocabulary detection: novel = rare
categories, seen in image-text pretraining, never in detection training):
- "base":    in pretraining and in detection training;
- "novel":   in the pretraining captions, withheld from detection training (the LVIS setting);
- "heldout": in neither (the build's held-out sprites: their names never occur in any caption).
`frequency` is LVIS's field: "f" for base, "r" for novel and held-out. detect_train draws its
sprites from the base categories only and lists only them, so novel and held-out sprites enter
detection training neither as names nor as boxes nor as pixels; detect_val / detect_test draw from
all three sets, the first sprite of each image from base, novel and held-out in turn (so each set
has boxes however small it is), the others from all of them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ...io import atomic_replace_dir, atomic_write_json, honour_umask
from ...progress import track
from ..formats.coco import LVIS_FREQUENCY, coco_instances, write_coco
from .scenes import generate_scene
from .sprites import SpriteAtlas

DETECTION_DIR = "detection"
SPLITS = ("detect_train", "detect_val", "detect_test")
FORMAT_VERSION = 1


def instances_file(split: str) -> str:
    return f"instances_{split}.json"


def category(atlas: SpriteAtlas, sprite_id: int, subset: str) -> dict:
    """A COCO category for a sprite: id = sprite id + 1 (COCO ids start at 1)."""
    return {
        "id": sprite_id + 1,
        "name": atlas.names[sprite_id],
        "supercategory": atlas.categories[sprite_id],
        "sprite_id": sprite_id,
        "set": subset,
        "frequency": LVIS_FREQUENCY.get(subset, "f"),
    }


def export_coco(root: Path, entries: list[dict], atlas: SpriteAtlas, vocab, heldout, image_size: int) -> None:
    """`instances_<split>.json` for a build's splits, from its Karpathy-style entries."""
    cats = [category(atlas, i, "seen") for i in vocab] + [category(atlas, i, "heldout") for i in heldout]
    for split in dict.fromkeys(e["split"] for e in entries):
        images = [
            {
                "id": k,
                "file_name": f"images/{e['filepath']}/{e['filename']}",
                "width": image_size,
                "height": image_size,
                "boxes": e["boxes"],
                "labels": [label + 1 for label in e["labels"]],
            }
            for k, e in enumerate(entries)
            if e["split"] == split
        ]
        write_coco(root / instances_file(split), coco_instances(images, cats, {"split": split}))


def detection_vocabulary(vocab, heldout, novel_fraction: float, heldout_count: int, seed: int) -> dict:
    """{"base", "novel", "heldout"} sprite ids: a seeded `novel_fraction` of the build's vocabulary
    (at least one, never all) and `heldout_count` of its held-out sprites."""
    vocab, heldout = sorted(vocab), sorted(heldout)
    rng = np.random.default_rng([seed, 19])
    n_novel = min(len(vocab) - 1, max(1, round(novel_fraction * len(vocab))))
    novel = sorted(int(i) for i in rng.choice(vocab, n_novel, replace=False))
    held = sorted(int(i) for i in rng.choice(heldout, min(heldout_count, len(heldout)), replace=False))
    return {"base": [i for i in vocab if i not in set(novel)], "novel": novel, "heldout": held}


def build_detection(
    root: str | Path,
    *,
    image_size: int = 128,
    train: int = 4000,
    val: int = 500,
    test: int = 1000,
    novel_fraction: float = 0.25,
    heldout_count: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write (or reuse) ROOT/detection for the emoji-scenes build at ROOT; returns its meta."""
    root = Path(root)
    build = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    if image_size < 16 or min(train, val, test) < 1 or not 0 < novel_fraction < 1:
        raise ValueError("detection: image_size >= 16, split sizes >= 1 and 0 < novel_fraction < 1 are required")
    params = {
        "image_size": image_size,
        "sizes": {"detect_train": train, "detect_val": val, "detect_test": test},
        "novel_fraction": novel_fraction,
        "heldout_count": heldout_count,
        "seed": seed,
        "build": build["params"],
    }
    out = root / DETECTION_DIR
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
        if meta.get("format_version") == FORMAT_VERSION and meta.get("params") == json.loads(json.dumps(params)):
            return meta
    except (OSError, ValueError):
        pass
    atlas = SpriteAtlas.load()
    sets = detection_vocabulary(
        build["vocabulary"]["ids"], build["heldout_vocabulary"]["ids"], novel_fraction, heldout_count, seed
    )
    every = sorted(sets["base"] + sets["novel"] + sets["heldout"])
    subset_of = {i: s for s, ids in sets.items() for i in ids}
    pools = [ids for ids in sets.values() if ids]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{DETECTION_DIR}.tmp-", dir=root))
    honour_umask(tmp, directory=True)
    try:
        counts = {}
        for split, n in params["sizes"].items():
            vocab = sets["base"] if split == "detect_train" else every
            cats = [category(atlas, i, subset_of[i]) for i in vocab]
            (tmp / "images" / split).mkdir(parents=True)
            images = []
            for i in track(range(n), f"detection {split}", enabled=progress):
                # val / test: the first sprite of image i comes from base, novel, held-out in turn
                required = () if split == "detect_train" else pools[i % len(pools)]
                scene = generate_scene(build["params"]["seed"], split, i, image_size=image_size, vocab=vocab,
                                       required=required, atlas=atlas)  # fmt: skip
                name = f"images/{split}/{split}_{i:07d}.png"
                scene.image.save(tmp / name, format="PNG")
                labels = [label + 1 for label in scene.labels]
                images.append({"id": i, "file_name": name, "width": image_size, "height": image_size,
                               "boxes": scene.boxes, "labels": labels})  # fmt: skip
            write_coco(tmp / instances_file(split), coco_instances(images, cats, {"split": split}))
            counts[split] = {"images": n, "boxes": sum(len(im["labels"]) for im in images)}
        meta = {
            "format_version": FORMAT_VERSION,
            "params": params,
            "counts": counts,
            "sets": {s: {"ids": ids, "names": [atlas.names[i] for i in ids]} for s, ids in sets.items()},
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        atomic_write_json(tmp / "meta.json", meta)
        atomic_replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
