#!/usr/bin/env python3
"""Throughput of the emoji-scenes data path: generator, dataset build, Karpathy and WebDataset readers.

    python benchmarks/data_throughput.py [--scenes 2000] [--build-size 4000] [--out DIR]

Prints JSON and writes benchmarks/results/data_throughput.json. Figures are scenes (or images) per
second on this machine; compare ratios within one run, not absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL

from mmtlab.data.emoji_scenes import SpriteAtlas, build_emoji_scenes, caption_scene, generate_scene
from mmtlab.data.formats.karpathy import read_karpathy
from mmtlab.data.formats.webdataset import ShardStats, iter_shards

RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.json"


def rate(n: int, seconds: float) -> dict:
    return {"items": n, "seconds": round(seconds, 3), "per_second": round(n / seconds, 1)}


def bench_generator(n: int, atlas: SpriteAtlas) -> dict:
    out = {}
    for image_size in (64, 128):
        t = time.perf_counter()
        for i in range(n):
            generate_scene(0, "bench", i, image_size=image_size, atlas=atlas)
        out[f"scene_only_{image_size}px"] = rate(n, time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(n):
        caption_scene(generate_scene(0, "bench", i, atlas=atlas), "descriptive", atlas=atlas)
    out["scene_plus_5_descriptive_captions"] = rate(n, time.perf_counter() - t)
    styles = ("alt_text", "descriptive", "narrative")
    t = time.perf_counter()
    for i in range(n):
        caption_scene(generate_scene(0, "bench", i, atlas=atlas), styles[i % 3], n=1, atlas=atlas)
    out["scene_plus_1_caption_mixed_styles"] = rate(n, time.perf_counter() - t)
    return out


def bench_build(root: Path, size: int) -> tuple[dict, Path]:
    out = {}
    eval_size, heldout = size // 8, size // 16
    total = size + 2 * eval_size + heldout
    path = root / "w2"
    for workers in (1, 2):
        path = root / f"w{workers}"
        t = time.perf_counter()
        build_emoji_scenes(
            path, size=size, eval_size=eval_size, heldout_size=heldout, shard_size=1000, progress=False, workers=workers
        )
        out[f"build_{workers}_workers"] = rate(total, time.perf_counter() - t)
    out["dataset_bytes"] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return out, path


def bench_readers(path: Path) -> dict:
    from PIL import Image

    t = time.perf_counter()
    records = read_karpathy(path / "dataset_emoji_scenes.json")
    parsed = time.perf_counter() - t
    for r in records:
        with Image.open(r.path) as im:
            im.convert("RGB")
    karpathy = rate(len(records), time.perf_counter() - t)
    karpathy["json_parse_seconds"] = round(parsed, 3)

    stats = ShardStats()
    t = time.perf_counter()
    n = sum(1 for _ in iter_shards(sorted(str(p) for p in (path / "shards").glob("*.tar")), stats=stats))
    wds = rate(n, time.perf_counter() - t)
    wds["skipped"] = stats.skipped
    t = time.perf_counter()
    n = sum(1 for _ in iter_shards(sorted(str(p) for p in (path / "shards").glob("*.tar")), decode=False))
    return {
        "karpathy_read_and_decode": karpathy,
        "webdataset_read_and_decode": wds,
        "webdataset_read_no_decode": rate(n, time.perf_counter() - t),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2000, help="scenes for the generator benchmark")
    parser.add_argument("--build-size", type=int, default=4000, help="pretrain images in the timed builds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    atlas = SpriteAtlas.load()
    generate_scene(0, "bench", 0, atlas=atlas)  # warm caches (atlas decode) outside the timings
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "platform": platform.platform(),
        },
        "generator": bench_generator(args.scenes, atlas),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["build"], path = bench_build(Path(tmp), args.build_size)
        result["readers"] = bench_readers(path)
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
