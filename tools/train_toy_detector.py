#!/usr/bin/env python3
"""Train the toy detector (emoji-scenes' Faster R-CNN stand-in) and write the shipped weights.

Run once by a maintainer; the output is committed, so users and CI never train it:

    nice -n 10 .venv/bin/python tools/train_toy_detector.py [--steps 4000] [--out PATH]

(default --out: src/mmtlab/data/emoji_scenes/assets/toy_detector.safetensors)

Training data is drawn fresh from the scene generator (split "detector-train", never a dataset
split): for every scene the same proposal boxes the region pipeline uses (gold boxes jittered +
random distractors) plus the exact gold boxes, each labelled with the sprite whose box it overlaps
with IoU >= 0.5, else "background" (a subsample of background crops keeps the classes balanced).
Classes are the non-held-out sprites plus background, so held-out sprites stay unseen, as they do
for every model. Accuracy on a separate scene stream ("detector-val") is printed and stored in the
file's metadata; errors are expected and wanted: they are the "silver" labels of the ablation study.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from mmtlab.data.boxes import box_iou
from mmtlab.data.detector import BACKGROUND, CROP, ToyDetector, crop_boxes
from mmtlab.data.emoji_scenes.build import HELDOUT_FRACTION, HELDOUT_SEED
from mmtlab.data.emoji_scenes.scenes import generate_scene
from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
from mmtlab.data.regions import GOLD_IOU, proposal_rng, propose_boxes

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/mmtlab/data/emoji_scenes/assets/toy_detector.safetensors"
SEED = 7
PROPOSALS = 8
KEEP_BACKGROUND = 0.3


def class_table(atlas: SpriteAtlas) -> list[int]:
    """Sprite id of every class: the non-held-out sprites, then background."""
    held = set(atlas.heldout_ids(HELDOUT_FRACTION, HELDOUT_SEED))
    return [i for i in range(len(atlas)) if i not in held] + [BACKGROUND]


def scene_crops(split: str, index: int, vocab: list[int], class_of: dict[int, int], rng: np.random.Generator):
    """Labelled crops of one scene: (crops [n, 3, 32, 32], class ids [n])."""
    scene = generate_scene(SEED, split, index, image_size=64, vocab=vocab, required=())
    img = torch.from_numpy(np.asarray(scene.image, dtype=np.float32)).permute(2, 0, 1).div(127.5).sub(1.0)
    gold = torch.tensor(scene.boxes, dtype=torch.float32).reshape(-1, 4)
    props = propose_boxes(gold.numpy(), 64, 64, PROPOSALS, proposal_rng(f"{split}-{index}", SEED))
    boxes = torch.cat([torch.from_numpy(props), gold])
    iou = box_iou(boxes, gold).max(dim=1)
    cls = torch.tensor([class_of[s] for s in scene.labels])[iou.indices]
    labels = torch.where(iou.values >= GOLD_IOU, cls, class_of[BACKGROUND])
    keep = (labels != class_of[BACKGROUND]) | torch.from_numpy(rng.random(len(labels)) < KEEP_BACKGROUND)
    return crop_boxes(img, boxes[keep], CROP), labels[keep]


class CropStream(IterableDataset):
    def __init__(self, split: str, start: int, vocab: list[int], class_of: dict[int, int]):
        self.split, self.start, self.vocab, self.class_of = split, start, vocab, class_of

    def __iter__(self):
        rng = np.random.default_rng([SEED, self.start])
        i = self.start
        while True:
            crops, labels = scene_crops(self.split, i, self.vocab, self.class_of, rng)
            # Light photometric jitter so features do not hinge on exact pixel values.
            crops = crops * (1 + 0.1 * float(rng.normal())) + 0.05 * float(rng.normal())
            yield from zip(crops, labels)
            i += 1


@torch.no_grad()
def evaluate(det: ToyDetector, vocab, class_of, scenes: int) -> dict:
    det.eval()
    rng = np.random.default_rng(0)
    bg = class_of[BACKGROUND]
    hit = n_obj = bg_hit = n_bg = 0
    for i in range(scenes):
        crops, labels = scene_crops("detector-val", i, vocab, class_of, rng)
        pred = det(crops)[1].argmax(-1)
        obj = labels != bg
        hit += int((pred[obj] == labels[obj]).sum())
        n_obj += int(obj.sum())
        bg_hit += int((pred[~obj] == bg).sum())
        n_bg += int((~obj).sum())
    det.train()
    return {
        "object_top1": hit / max(n_obj, 1),
        "background_recall": bg_hit / max(n_bg, 1),
        "val_objects": n_obj,
        "val_background": n_bg,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--feature-dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--val-scenes", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    atlas = SpriteAtlas.load()
    classes = class_table(atlas)
    class_of = {s: c for c, s in enumerate(classes)}
    vocab = [s for s in classes if s != BACKGROUND]
    det = ToyDetector(len(classes), args.feature_dim, args.width)
    det.class_sprite_ids = classes
    opt = torch.optim.AdamW(det.parameters(), lr=args.lr, weight_decay=1e-4)
    stream = DataLoader(
        CropStream("detector-train", 0, vocab, class_of),
        batch_size=args.batch_size,
        num_workers=1,
        persistent_workers=True,
    )
    print(f"{len(vocab)} sprite classes + background, {sum(p.numel() for p in det.parameters()):,} parameters")
    t0 = time.perf_counter()
    det.train()
    for step, (crops, labels) in enumerate(stream):
        if step == args.steps:
            break
        lr = args.lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = F.cross_entropy(det(crops)[1], labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            el = time.perf_counter() - t0
            eta = el / (step + 1) * (args.steps - step - 1)
            print(
                f"step {step + 1}/{args.steps} loss {loss.item():.3f} lr {lr:.2e} {el:.0f}s elapsed, ETA {eta:.0f}s",
                flush=True,
            )
    metrics = evaluate(det, vocab, class_of, args.val_scenes)
    print(json.dumps(metrics))
    det.eval()
    det.save(
        args.out,
        meta={
            "steps": args.steps,
            "seed": SEED,
            "atlas_sha256": atlas.digest,
            "proposals": PROPOSALS,
            "val": metrics,
            "train_seconds": round(time.perf_counter() - t0),
        },
    )
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
