"""Flamingo training-step cost, measured as ratios in one process: documents/s of a Flamingo step
(frozen ViT and LM, trained resampler + gated blocks) against the same model with nothing frozen
and against the frozen LM alone on the same token sequences. Random weights, synthetic documents
with `--images` images each (the speed does not depend on what the weights are).

    python benchmarks/flamingo_step.py                            # the sizes of configs/runs/flamingo.yaml
    python benchmarks/flamingo_step.py --images 4 --latents 64

Writes JSON to stdout and benchmarks/results/flamingo_step.json.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import cpu_name, write_result  # benchmarks/common.py

from mmtlab.config import ModelConfig, TrainConfig
from mmtlab.models import CausalLM, Flamingo
from mmtlab.train.optim import build_optimizer


def timed_steps(step, repeats: int) -> float:
    step()  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--images", type=int, default=8, help="images per document")
    ap.add_argument("--chunk-tokens", type=int, default=16, help="text tokens per image")
    ap.add_argument("--latents", type=int, default=16)
    ap.add_argument("--patch", type=int, default=8, help="the vision encoder's patch size (flamingo-vision.yaml: 8)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocab = 2048
    lm_cfg = dict(width=args.width, depth=args.depth, heads=4, text={"max_len": 384, "vocab_size": vocab})
    image = {"size": 64, "patch": args.patch}
    vision = {"layout": "modality_specific", "width": 128, "depth": 4, "heads": 4, "image": image}
    lm = CausalLM(ModelConfig(arch="lm", **lm_cfg))
    fl_cfg = ModelConfig(
        arch="flamingo",
        **lm_cfg,
        flamingo={"vision_run": "-", "lm_run": "-", "latents": args.latents, "vision": vision},
    )
    b, n = args.batch_size, args.images
    chunk = [7] * args.chunk_tokens
    row = [2] + sum(([vocab] + chunk + [3] for _ in range(n)), [])
    tokens = torch.tensor([row] * b)
    text_tokens = tokens[tokens != vocab].view(b, -1)  # the LM alone reads the text without markers
    images = torch.randn(b * n, 3, 64, 64)
    counts = torch.full((b,), n)
    labels = tokens[:, 1:].clamp(max=vocab - 1)

    def step_fn(model, forward, targets):
        opt = build_optimizer(model, TrainConfig(lr=1e-4))

        def step():
            logits = forward()
            F.cross_entropy(logits[:, :-1].reshape(-1, vocab), targets.reshape(-1)).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    flamingo = Flamingo(fl_cfg)
    unfrozen = Flamingo(fl_cfg)
    unfrozen.requires_grad_(True)

    def fl_forward(m):
        return lambda: m(tokens, m.media_tokens(images, counts))

    def unfrozen_forward():  # media_tokens runs the ViT under no_grad; here its gradient is wanted
        frames = unfrozen.resampler(unfrozen.vision(images)[:, None]).view(b, -1, args.width)
        return unfrozen(tokens, frames)

    t_fl = timed_steps(step_fn(flamingo, fl_forward(flamingo), labels), args.repeats)
    t_all = timed_steps(step_fn(unfrozen, unfrozen_forward, labels), args.repeats)
    t_lm = timed_steps(step_fn(lm, lambda: lm(text_tokens), text_tokens[:, 1:]), args.repeats)
    result = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "batch_size": b,
        "images_per_document": n,
        "tokens_per_document": tokens.shape[1],
        "latents": args.latents,
        "patch": args.patch,
        "params": {
            "trainable": flamingo.num_params(trainable_only=True),
            "total": flamingo.num_params(),
        },
        "docs_per_s": {"flamingo": b / t_fl, "flamingo_unfrozen": b / t_all, "lm_alone": b / t_lm},
        "unfrozen_over_flamingo_step_time": t_all / t_fl,
        "flamingo_over_lm_step_time": t_fl / t_lm,
    }
    write_result("flamingo_step", result)


if __name__ == "__main__":
    main()
