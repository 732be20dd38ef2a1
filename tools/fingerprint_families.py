"""Train every model family for a few fixed-seed steps on a tiny build and print a hash of each
run's final weights and optimizer state: a refactor that must not change behaviour gives the same
hashes before and after.

    python tools/fingerprint_families.py --out /tmp/fp --steps 20 > before.json
    ... refactor ...
    python tools/fingerprint_families.py --out /tmp/fp2 --steps 20 > after.json && diff before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def tensors_hash(path: Path) -> str:
    h = hashlib.sha256()
    for k, v in sorted(load_file(path).items()):
        h.update(k.encode())
        h.update(v.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()[:16]


def base(data: Path, steps: int, **model) -> dict:
    return {
        "seed": 0,
        "data": {"root": str(data)},
        "tokenizer": {"vocab_size": 300},
        "model": {
            "width": 32,
            "depth": 2,
            "heads": 2,
            "embed_dim": 16,
            "image": {"size": 64, "patch": 16},
            "text": {"max_len": 24},
            **model,
        },
        "objectives": {"contrastive": 1.0},
        "train": {"steps": steps, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "checkpoint_every": steps,
                  "log_every": 5, "threads": 1},
        "eval": {"batch_size": 32},
    }  # fmt: skip


def configs(data: Path, docs: Path, runs: Path, steps: int) -> dict[str, dict]:
    c: dict[str, dict] = {}
    c["dual"] = base(data, steps, layout="modality_specific")
    c["dual_siglip_cpe"] = base(data, steps, layout="modality_specific", image={"size": 64, "patch": 16, "cpe": True})
    c["dual_siglip_cpe"]["objectives"] = {"siglip": 1.0, "zloss": 0.1}
    regions = {"size": 64, "patch": 16, "input": "regions"}
    for layout in ("merged", "coattention", "asym_text_queries", "lxmert"):
        r = base(data, steps, layout=layout, image=regions)
        r["data"]["regions"] = {"num_regions": 4}
        r["objectives"] = {"mlm": 1.0, "mrm_kl": 1.0, "itm": 1.0, "contrastive": 1.0}
        c[f"{layout}_regions"] = r
    hard = base(data, steps, layout="merged")
    hard["objectives"] = {"contrastive": 1.0, "itm": {"negatives": "hard"}, "itm_contrastive": {"candidates": 12}}
    c["merged_itm_hard"] = hard
    text_only = base(data, steps, layout="merged", image=regions)
    text_only["data"].update(text_only=True, regions={"num_regions": 4})
    text_only["objectives"] = {"mlm": 1.0}
    c["text_only"] = text_only
    for arch in ("mammut", "coca", "dual_captioner"):
        r = base(data, steps, arch=arch, pool="mean", layout_args={"vision_depth": 1},
                 image={"size": 64, "patch": 16, "cpe": True})  # fmt: skip
        r["objectives"] = (
            {"focal_contrastive": 1.0, "caption": 2.0} if arch == "mammut" else {"contrastive": 1.0, "caption": 2.0}
        )
        c[arch] = r
    vqa = base(data, steps, arch="mammut", pool="mean", layout_args={"vision_depth": 1})
    vqa["data"]["task"] = "vqa"
    vqa["objectives"] = {"caption": 1.0}
    c["mammut_vqa"] = vqa
    for mods in (["image", "text"], ["image"], ["text"]):
        r = base(data, steps, arch="data2vec",
                 data2vec={"modalities": mods, "ema_decay": 0.9, "ema_end_decay": 0.99})  # fmt: skip
        r["objectives"] = {"data2vec": 1.0}
        c["data2vec_" + "_".join(mods)] = r
    eff = base(data, steps, arch="data2vec", image={"size": 32, "patch": 8},
               data2vec={"modalities": ["image"], "efficient": True, "masks_per_sample": 2,
                         "image": {"decoder_groups": 4, "decoder_layers": 2}})  # fmt: skip
    eff["objectives"] = {"data2vec": 1.0}
    c["data2vec_efficient"] = eff
    speech = base(data, steps, arch="data2vec", data2vec={"modalities": ["speech"], "speech": {"decoder_groups": 4}},
                  speech={"conv_layers": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2],
                                          [16, 2, 2]], "conv_pos_groups": 4, "max_seconds": 1.0})  # fmt: skip
    speech["objectives"] = {"data2vec": 1.0}
    c["data2vec_speech"] = speech
    lm = base(data, steps, arch="lm", text={"max_len": 128})
    lm["data"]["interleaved"] = str(docs)
    lm["objectives"] = {"caption": 1.0}
    c["lm_documents"] = lm
    lm_captions = base(data, steps, arch="lm")
    lm_captions["objectives"] = {"caption": 1.0}
    c["lm_captions"] = lm_captions
    fl = base(data, steps, arch="flamingo",
              flamingo={"vision_run": str(runs / "dual"), "lm_run": str(runs / "lm_documents"), "latents": 4,
                        "gate_init": 0.5})  # fmt: skip
    fl["data"].update(interleaved=str(docs), mixture={"interleaved": 1.0, "pairs": 0.5}, max_images=3)
    fl["train"].update(batch_size=4, grad_accum=2)
    fl["objectives"] = {"caption": 1.0}
    c["flamingo"] = fl
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work folder (data, runs)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--only", default=None, help="comma-separated run names")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mmtlab.config import load_config
    from mmtlab.data.emoji_scenes import build_emoji_scenes
    from mmtlab.data.interleaved import build_documents, write_shards
    from mmtlab.data.sources import load_split
    from mmtlab.train.loop import train

    data = args.out / "data"
    if not (data / "images").exists():
        build_emoji_scenes(data, size=256, eval_size=40, heldout_size=10, seed=0, progress=False)
    docs = args.out / "docs"
    if not docs.exists():
        split = load_config({"data": {"root": str(data)}}).data
        write_shards(build_documents(load_split(split, "pretrain"), 60, max_chunks=4, seed=0), docs)
    runs = args.out / "runs"
    result = {}
    only = set(args.only.split(",")) if args.only else None
    for name, raw in configs(data, docs, runs, args.steps).items():
        if only and name not in only:
            continue
        run = runs / name
        if not (run / "config.yaml").exists():
            train(load_config(raw), run, progress=False)
        ckpt = run / "checkpoints" / f"step_{args.steps:08d}"
        result[name] = {"model": tensors_hash(ckpt / "model.safetensors"),
                        "optimizer": tensors_hash(ckpt / "optimizer.safetensors")}  # fmt: skip
        print(name, result[name], file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
