"""Fine-tuning a pretrained run into an open-vocabulary detector (models/detector.py) on the base
categories of a COCO detection file: the MaMMUT / OWL-ViT recipe of pretrain, then fine-tune the
image tower with a per-token box and class head whose classifier is the text encoder's embeddings
of the category names.

Only base categories enter training: the training file's categories, boxes and the query names are
checked (data/detection.py: `check_base_only`) before the first step. The name embeddings come from
the frozen pretrained text side, computed once. The result is a self-contained detector directory:

    DET/config.yaml         the pretrained run's resolved config
    DET/tokenizer.json      its tokenizer
    DET/model.safetensors   the detector's weights (fine-tuned image tower, frozen text copy, heads)
    DET/detector.json       image size, training settings, the base categories, throughput
    DET/metrics.jsonl       loss parts per logged step
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmtlab.config import load_config
from mmtlab.data.detection import DetectionBatches, check_base_only
from mmtlab.data.emoji_scenes.detection import DETECTION_DIR, instances_file
from mmtlab.data.formats.coco import read_coco
from mmtlab.data.prompts import TEMPLATES, prompts
from mmtlab.data.tokenizer import load_tokenizer
from mmtlab.io import atomic_write_json
from mmtlab.models import build_model
from mmtlab.models.detector import Detector
from mmtlab.objectives.detection import detection_loss
from mmtlab.progress import training_progress
from mmtlab.rundir import latest_checkpoint, load_model_weights

DETECTOR_FILE = "detector.json"


def load_pretrained(run_dir: Path):
    """(model, tokenizer, cfg) of a pretrained run, without the api layer (train sits beside it)."""
    cfg = load_config(run_dir / "config.yaml")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoints yet")
    model = build_model(cfg)
    load_model_weights(ckpt, model)
    return model, load_tokenizer(run_dir / "tokenizer.json", cfg.model.text.max_len), cfg


def finetune_detect(
    run_dir: Path,
    out: Path | None = None,
    *,
    steps: int = 600,
    batch_size: int = 32,
    lr: float = 3e-4,
    weight_decay: float = 0.05,
    image_size: int | None = None,
    data: Path | None = None,
    annotations: Path | None = None,
    images: Path | None = None,
    seed: int = 0,
    threads: int | None = None,
    log_every: int = 10,
    progress: bool = True,
) -> Path:
    """Fine-tune RUN_DIR into a detector at `out` (default RUN_DIR/detect) on `annotations` (default:
    the run's emoji-scenes detection split, DATA/detection/instances_detect_train.json). A finished
    detector of the same settings is reused."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "detect"
    model, tokenizer, cfg = load_pretrained(run_dir)
    root = Path(data or cfg.data.root)
    ann = Path(annotations) if annotations else root / DETECTION_DIR / instances_file("detect_train")
    if not ann.exists():
        raise FileNotFoundError(
            f"{ann}: no detection annotations (mmtlab data build emoji-scenes --detection-size 128)"
        )
    trainset = read_coco(ann, images)
    size = image_size or _data_size(trainset) or 2 * cfg.model.image.size
    settings = {"run": str(run_dir), "annotations": str(ann), "steps": steps, "batch_size": batch_size, "lr": lr,
                "weight_decay": weight_decay, "image_size": size, "seed": seed}  # fmt: skip
    done = _finished(out, settings)
    if done is not None:
        return done
    base_ids = sorted(trainset.categories)
    check_base_only(trainset, base_ids)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    detector = Detector(model, size)
    names = [trainset.categories[c]["name"] for c in base_ids]
    queries = detector.embed_names(tokenizer, prompts(names), len(TEMPLATES))
    batches = DetectionBatches(trainset, size, {c: i for i, c in enumerate(base_ids)})
    params = [p for p in detector.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr)  # fmt: skip
    warmup = max(1, steps // 10)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = (out / "metrics.jsonl").open("w", encoding="utf-8")
    detector.train()
    t0, seen, rates = time.perf_counter(), 0, []
    it = batches.epochs(batch_size, seed)
    with training_progress() if progress else _Null() as bar:
        task = bar.add_task("detection fine-tune", total=steps, info="")
        for step in range(steps):
            frac = (
                (step + 1) / warmup
                if step < warmup
                else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
            )
            for g in opt.param_groups:
                g["lr"] = lr * frac
            x, targets, _ = next(it)
            t = time.perf_counter()
            outputs = detector(x, queries)
            losses = detection_loss(outputs["logits"], outputs["boxes"], targets)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            rates.append(len(x) / (time.perf_counter() - t))
            seen += len(x)
            if not math.isfinite(losses["loss"].item()):
                raise FloatingPointError(
                    f"detection fine-tune diverged at step {step + 1} (loss {losses['loss'].item()})"
                )
            if (step + 1) % log_every == 0 or step + 1 == steps:
                row = {"step": step + 1, **{k: round(v.item(), 5) for k, v in losses.items()}, "lr": lr * frac,
                       "images_per_s": round(sum(rates[-log_every:]) / len(rates[-log_every:]), 2)}  # fmt: skip
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.update(task, info=f"loss {row['loss']:.3f} | {row['images_per_s']:.0f} img/s")
            bar.advance(task)
    log.close()
    wall = time.perf_counter() - t0
    _save(detector, out, run_dir, settings, {
        "base_categories": base_ids,
        "skipped": dict(trainset.skipped + batches.skipped),
        "train_images": len(trainset.images),
        "train_boxes": trainset.n_boxes,
        "wall_s": round(wall, 1),
        "images_per_s_end_to_end": round(seen / wall, 2),
        "images_per_s_step_median": round(sorted(rates)[len(rates) // 2], 2),
        "threads": torch.get_num_threads(),
    })  # fmt: skip
    return out


def _data_size(data) -> int | None:
    sides = {max(im.width, im.height) for im in data.images}
    return sides.pop() if len(sides) == 1 else None


def _finished(out: Path, settings: dict) -> Path | None:
    try:
        meta = json.loads((out / DETECTOR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return out if meta.get("settings") == settings and (out / "model.safetensors").exists() else None


def _save(detector: Detector, out: Path, run_dir: Path, settings: dict, info: dict) -> None:
    shutil.copy(run_dir / "config.yaml", out / "config.yaml")
    shutil.copy(run_dir / "tokenizer.json", out / "tokenizer.json")
    weights = {k: v.detach().clone().contiguous().cpu() for k, v in detector.state_dict().items()}
    save_file(weights, out / "model.safetensors")
    atomic_write_json(out / DETECTOR_FILE, {"image_size": detector.image_size, "settings": settings, **info})


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass
