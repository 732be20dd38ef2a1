"""Collect the objects ablation (docs/objects.md): one small JSON per run under docs/results/objects/
and a markdown table on stdout.

    python tools/objects_table.py runs/a01-base16 runs/a02-n100 ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "objects"


def summarise(run: Path) -> dict:
    zs = json.loads((run / "eval" / "zeroshot.json").read_text())
    ret = json.loads((run / "eval" / "retrieval.json").read_text())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    pps = [m["pairs_per_s"] for m in metrics if "pairs_per_s" in m]
    wall = json.loads((run / "wall.json").read_text()) if (run / "wall.json").exists() else {}
    steps = max(m.get("step", 0) for m in metrics)
    c = zs["classification"]
    return {
        "run": run.name,
        "steps": steps,
        "train_wall_s": wall.get("train_wall_s"),
        "pairs_per_s_1thread": round(sorted(pps)[len(pps) // 2], 1) if pps else None,
        "seen_classes": c["seen"]["n_classes"] - c.get("heldout_within", {}).get("n_classes", 0),
        "zs_seen_top1": round(zs["seen_within_top1"], 1),
        "zs_seen_top5": round(zs["seen_within_top5"], 1),
        "zs_seen_chance": round(zs["seen_within_chance_top1"], 2),
        "zs_heldout_top1": round(zs.get("heldout_within_top1", float("nan")), 1),
        "zs_heldout_chance": round(zs.get("heldout_within_chance_top1", float("nan")), 2),
        "zs_seen_top1_all_names": round(zs["seen_top1"], 1),
        "controlled_t2i_r1": round(zs["controlled_t2i_r1"], 1),
        "controlled_i2t_r1": round(zs["controlled_i2t_r1"], 1),
        "controlled_chance": round(zs["controlled_chance_r1"], 1),
        "test_t2i_r1": round(ret["t2i_r1"], 1),
        "test_i2t_r1": round(ret["i2t_r1"], 1),
    }


def main(runs: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cols = ["run", "pairs_per_s_1thread", "steps", "zs_seen_top1", "zs_seen_chance", "zs_heldout_top1",
            "controlled_t2i_r1", "controlled_chance", "test_t2i_r1"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in runs:
        s = summarise(Path(r))
        (OUT / f"{s['run']}.json").write_text(json.dumps(s, indent=1) + "\n")
        print("| " + " | ".join(str(s[c]) for c in cols) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
