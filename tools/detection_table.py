"""Collect the open-vocabulary detection results (docs/detection.md): one small JSON per run under
docs/results/detection/ and a markdown table on stdout.

    python tools/detection_table.py runs/dual-s0 runs/mammut-s0 ...

Each run is a pretrained run evaluated with `mmtlab eval detect RUN --finetune-steps N` (its
eval/detect.json and its detector RUN/detect/detector.json).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "detection"


def pct(x):
    return None if x is None else round(100 * x, 2)


def summarise(run: Path) -> dict:
    det = json.loads((run / "eval" / "detect.json").read_text())
    info = json.loads((run / "detect" / "detector.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    row = {
        "run": run.name,
        "arch": cfg["model"]["arch"],
        "cpe": cfg["model"]["image"].get("cpe", False),
        "seed": cfg["seed"],
        "pretrain_steps": max(m.get("step", 0) for m in metrics),
        "finetune_steps": info["settings"]["steps"],
        "finetune_batch": info["settings"]["batch_size"],
        "image_size": det["image_size"],
        "finetune_images_per_s_1thread": info["images_per_s_step_median"],
        "finetune_wall_s": info["wall_s"],
        "test_images": det["n_images"],
    }
    for name, ap in det["ap"].items():
        row[f"{name}_AP"], row[f"{name}_AP50"] = pct(ap["AP"]), pct(ap["AP50"])
        row[f"{name}_boxes"] = ap["boxes"]
    return row


def main(runs: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [summarise(Path(r)) for r in runs]
    for row in rows:
        (OUT / f"{row['run']}.json").write_text(json.dumps(row, indent=1) + "\n")
    cols = ["run", "arch", "cpe", "seed", "base_AP", "base_AP50", "novel_AP", "novel_AP50", "heldout_AP",
            "heldout_AP50", "finetune_images_per_s_1thread"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row.get(c)) for c in cols) + " |")
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["arch"], row["cpe"], row["pretrain_steps"]), []).append(row)
    print()
    for (arch, cpe, steps), rs in groups.items():
        stats = []
        for k in ("base_AP", "novel_AP", "novel_AP50", "heldout_AP"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            stats.append(f"{k} {statistics.mean(vals):.2f} ± {sd:.2f}" if vals else f"{k} -")
        print(f"{arch} cpe={cpe} {steps} steps (n={len(rs)}): " + ", ".join(stats))


if __name__ == "__main__":
    main(sys.argv[1:])
