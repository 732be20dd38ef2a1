"""data2vec vs data2vec 2.0 training speed, measured in one process.

    python benchmarks/data2vec_speed.py                       # image, text and speech, d2v-tiny sizes
    python benchmarks/data2vec_speed.py --modality image --masks 8 --set model.image.patch=8

Both variants run the same model, masking and batch of samples; they differ in what data2vec 2.0
changes: the student encodes only the unmasked tokens and a light conv decoder fills in the
masked ones (`efficient`), and each sample gets `--masks` masks that share one teacher pass
(`masks_per_sample`). Reported per variant: median optimizer-step time (steps of the two variants
interleaved, so machine load hits both alike), FLOPs per step (torch.utils.flop_counter, forward
+ backward), samples/s and masked views/s (a view = one masked copy of a sample with its targets).
The speed-ups are ratios of 2.0 over 1.0: per sample, and per masked view -- data2vec 2.0's
claim is the second, since every view is a full training example for the student.
Writes JSON to stdout and benchmarks/results/data2vec_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import write_result  # benchmarks/common.py
from torch.utils.flop_counter import FlopCounterMode

from mmtlab.config import load_config
from mmtlab.data.unimodal import ModalityBatch
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.train.optim import build_optimizer


def batch_for(modality: str, cfg, n: int, g: torch.Generator, seconds: float) -> ModalityBatch:
    if modality == "image":
        s = cfg.model.image.size
        return ModalityBatch(images=torch.randn(n, 3, s, s, generator=g))
    if modality == "speech":
        return ModalityBatch(audio=torch.randn(n, int(seconds * 16000), generator=g))
    tokens = torch.randint(5, cfg.model.text.vocab_size, (n, cfg.model.text.max_len), generator=g)
    tokens[:, 0], tokens[:, -1] = cfg.model.text.cls_id, cfg.model.text.sep_id
    return ModalityBatch(tokens=tokens, text_mask=torch.ones_like(tokens, dtype=torch.bool))


def variant(modality: str, efficient: bool, masks: int, overrides: list[str]):
    cfg = load_config(
        {"model": "d2v-tiny", "objectives": {"data2vec": 1.0}},
        [
            "model.text.vocab_size=4096",
            f"model.data2vec.modalities=[{modality}]",
            f"model.data2vec.efficient={str(efficient).lower()}",
            f"model.data2vec.masks_per_sample={masks}",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model, build_objectives(cfg), build_optimizer(model, cfg.train)


def measure(modality: str, batch_size: int, masks: int, steps: int, seconds: float, overrides: list[str]) -> dict:
    runs = {"data2vec": variant(modality, False, 1, overrides), "data2vec2": variant(modality, True, masks, overrides)}
    batch = batch_for(modality, runs["data2vec"][0], batch_size, torch.Generator().manual_seed(0), seconds)

    def step(name: str, i: int) -> float:
        cfg, model, objective, opt = runs[name]
        t = time.perf_counter()
        loss, _ = objective(model, batch, torch.Generator().manual_seed(i))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        objective.after_optimizer_step(model, i + 1)
        return time.perf_counter() - t

    out = {}
    for name in runs:
        step(name, 0)  # warm-up
        with FlopCounterMode(display=False) as fc:
            step(name, 1)
        out[name] = {"flops_per_step": fc.get_total_flops(), "times": []}
    for i in range(steps):  # interleaved
        for name in runs:
            out[name]["times"].append(step(name, 2 + i))
    for name, r in out.items():
        views = batch_size * (masks if name == "data2vec2" else 1)
        t = statistics.median(r["times"])
        r.update(step_s=t, samples_per_s=batch_size / t, views_per_s=views / t, views_per_step=views)
        r["params"] = runs[name][1].num_params()
    a, b = out["data2vec"], out["data2vec2"]
    flops_per_view = {k: r["flops_per_step"] / r["views_per_step"] for k, r in out.items()}
    return {
        "modality": modality,
        "batch_size": batch_size,
        "masks_per_sample": masks,
        "mask_prob": getattr(runs["data2vec"][0].model.data2vec, modality).mask_prob,
        "data2vec": a,
        "data2vec2": b,
        "speedup_per_sample": a["step_s"] / b["step_s"],
        "speedup_per_view": b["views_per_s"] / a["views_per_s"],
        "flops_per_view_ratio": flops_per_view["data2vec"] / flops_per_view["data2vec2"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modality", action="append", choices=["image", "text", "speech"])
    ap.add_argument("--batch-size", type=int, default=64, help="samples per step (both variants)")
    ap.add_argument("--masks", type=int, default=4, help="2.0 masks per sample (paper: 16 image, 8 text/speech)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--seconds", type=float, default=2.0, help="speech: utterance length")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override, e.g. model.depth=6")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [
        measure(m, args.batch_size, args.masks, args.steps, args.seconds, args.overrides)
        for m in args.modality or ["image", "text", "speech"]
    ]
    report = {"threads": torch.get_num_threads(), "torch": torch.__version__, "overrides": args.overrides}
    report["results"] = results
    write_result("data2vec_speed", report)


if __name__ == "__main__":
    main()
