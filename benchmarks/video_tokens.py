"""Video encoder throughput: sparse tubes + sparse frames vs dense 3D patches, measured in one run.

    nice -n 10 python benchmarks/video_tokens.py [--frames 8] [--size 64] [--batch 16] [--steps 6] [--threads 1]

Three tiny MaMMUT vision towers (the same ViT, width 128, 4 layers, patch 8) read the same random
clips: `tubes` (the default model.video: TubeViT tubes + image patches every 4th frame), `frames`
(image patches every 4th frame only) and `dense3d` (one tube shape of 2x8x8 at stride 2x8x8: every
voxel, ViViT-style tubelets). A forward + backward of the vision tower is timed round-robin over the
three, so machine load hits them alike; report the ratios. Tokens/s counts the ViT's input tokens.
Writes JSON to stdout and benchmarks/results/video_tokens.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import cpu_name, write_result  # benchmarks/common.py
from torch.utils.flop_counter import FlopCounterMode

from mmtlab.config import ModelConfig
from mmtlab.models import build_model

ARMS = {
    "tubes": {},
    "frames": {"tubes": []},
    "dense3d": {"tubes": [{"kernel": (2, 8, 8), "stride": (2, 8, 8)}], "frame_stride": None},
}


def tower(video: dict, size: int):
    cfg = ModelConfig(arch="mammut", width=128, depth=2, heads=4, embed_dim=128, pool="mean",
                      layout_args={"vision_depth": 4, "cross_every": 2}, image={"size": size, "patch": 8},
                      text={"max_len": 16, "vocab_size": 100}, outputs=["contrastive"], video=video)  # fmt: skip
    return build_model(cfg)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clips = torch.randn(a.batch, a.frames, 3, a.size, a.size)
    models = {k: tower(v, a.size) for k, v in ARMS.items()}
    tokens = {k: m.video_embed.num_tokens(a.frames, a.size, a.size, 8) for k, m in models.items()}

    def step(m):
        m.zero_grad(set_to_none=True)
        m.encode_image(clips).sum().backward()

    flops = {}
    for k, m in models.items():
        step(m)  # warm-up
        with FlopCounterMode(display=False) as fc:
            step(m)
        flops[k] = fc.get_total_flops()
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(a.steps):
        for k, m in models.items():
            t0 = time.perf_counter()
            step(m)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    arms = {
        k: {
            "tokens_per_clip": tokens[k],
            "clips_per_s": a.batch / med[k],
            "tokens_per_s": a.batch * tokens[k] / med[k],
            "gflops_per_step": flops[k] / 1e9,
            "step_s_median": med[k],
        }  # fmt: skip
        for k in models
    }
    result = {
        "cpu": cpu_name(),
        "threads": a.threads,
        "args": vars(a),
        "arms": arms,
        "ratios": {
            "dense3d_over_tubes_step_time": med["dense3d"] / med["tubes"],
            "dense3d_over_tubes_tokens": tokens["dense3d"] / tokens["tubes"],
            "dense3d_over_tubes_flops": flops["dense3d"] / flops["tubes"],
            "tubes_over_frames_step_time": med["tubes"] / med["frames"],
        },
    }
    write_result("video_tokens", result)


if __name__ == "__main__":
    main()
