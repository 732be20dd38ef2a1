"""Detection fine-tuning and inference throughput of pretrained runs, measured in one process.

    nice -n 10 python benchmarks/detection_speed.py RUN [RUN ...] [--size 128] [--batch 32] [--steps 8] [--threads 1]

For each run: the OWL-ViT detector of train/detect.py on its image tower, one real batch of the
emoji-scenes detection training split; a fine-tune step (forward, Hungarian matching, losses,
backward, AdamW) and an inference pass (forward + top-100 detections) are timed round-robin over
the runs, so machine load hits all of them alike (report ratios, not absolute speeds, on a shared
machine). FLOPs per step from torch.utils.flop_counter; MFU against the best of a few fp32 matmuls
on the same threads. Writes JSON to stdout and benchmarks/results/detection_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from common import cpu_name, write_result  # benchmarks/common.py
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import matmul_peak  # benchmarks/train_throughput.py

from mmtlab.data.detection import DetectionBatches
from mmtlab.data.emoji_scenes.detection import DETECTION_DIR, instances_file
from mmtlab.data.formats.coco import read_coco
from mmtlab.data.prompts import TEMPLATES, prompts
from mmtlab.models.detector import Detector, top_detections
from mmtlab.objectives.detection import detection_loss
from mmtlab.train.detect import load_pretrained


def setup(run: Path, size: int, batch: int):
    model, tokenizer, cfg = load_pretrained(run)
    data = read_coco(Path(cfg.data.root) / DETECTION_DIR / instances_file("detect_train"))
    ids = sorted(data.categories)
    det = Detector(model, size)
    queries = det.embed_names(tokenizer, prompts([data.categories[c]["name"] for c in ids]), len(TEMPLATES))
    x, targets, _ = DetectionBatches(data, size, {c: i for i, c in enumerate(ids)}).load(data.images[:batch])
    opt = torch.optim.AdamW([p for p in det.parameters() if p.requires_grad], lr=1e-4)
    return {"run": run.name, "arch": cfg.model.arch, "det": det.train(), "q": queries, "x": x, "t": targets, "opt": opt}


def train_step(s) -> None:
    out = s["det"](s["x"], s["q"])
    loss = detection_loss(out["logits"], out["boxes"], s["t"])["loss"]
    s["opt"].zero_grad(set_to_none=True)
    loss.backward()
    s["opt"].step()


@torch.no_grad()
def infer(s) -> None:
    s["det"].eval()
    out = s["det"](s["x"], s["q"])
    top_detections(out["logits"], out["boxes"], 100, 0.5)
    s["det"].train()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    setups = [setup(r, args.size, args.batch) for r in args.runs]
    flops = {}
    for s in setups:
        train_step(s)  # warm up (and AdamW state)
        infer(s)
        probe = copy.deepcopy(s)
        with FlopCounterMode(display=False) as fc:
            train_step(probe)
        flops[s["run"]] = fc.get_total_flops()
    times: dict = {s["run"]: {"train": [], "infer": []} for s in setups}
    for _ in range(args.steps):
        for s in setups:
            t = time.perf_counter()
            train_step(s)
            times[s["run"]]["train"].append(time.perf_counter() - t)
            t = time.perf_counter()
            infer(s)
            times[s["run"]]["infer"].append(time.perf_counter() - t)
    peak = matmul_peak(torch.float32)
    rows = []
    for s in setups:
        tr, inf = statistics.median(times[s["run"]]["train"]), statistics.median(times[s["run"]]["infer"])
        rows.append(
            {
                "run": s["run"],
                "arch": s["arch"],
                "trainable_params": sum(p.numel() for p in s["det"].parameters() if p.requires_grad),
                "tokens_per_image": s["det"].patch_tokens(s["x"][:1]).shape[1],
                "finetune_images_per_s": round(args.batch / tr, 1),
                "inference_images_per_s": round(args.batch / inf, 1),
                "gflop_per_finetune_step": round(flops[s["run"]] / 1e9, 2),
                "finetune_mfu": round(flops[s["run"]] / tr / peak, 4),
            }
        )
    write_result(
        "detection_speed",
        {"cpu": cpu_name(), "threads": args.threads, "image_size": args.size, "batch": args.batch,
         "steps_timed": args.steps, "matmul_peak_gflops": round(peak / 1e9, 1), "runs": rows},
    )  # fmt: skip


if __name__ == "__main__":
    main()
