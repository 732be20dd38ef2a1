"""Markdown table of the video ablation (tools/video_ablation.sh): retrieval by arm, mean and
sample standard deviation over the seeds that finished, then each arm minus the full model seed by
seed (mean ± 95% t-interval: the paired test docs/findings.md quotes), plus the per-run numbers as
JSON. RUNS may also be that JSON (docs/results/video/ablation.json), to rebuild the tables.

    python tools/video_ablation_table.py RUNS_DIR [--json OUT.json]
    python tools/video_ablation_table.py docs/results/video/ablation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ARMS = ("full", "no_gate", "no_fixed_pos", "frames_only", "middle_frame")
METRICS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", type=Path)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    runs: dict[str, dict[int, dict]] = {}
    if a.runs.suffix == ".json":
        runs = {arm: {int(s): r for s, r in v.items()} for arm, v in json.loads(a.runs.read_text()).items()}
    for f in sorted(a.runs.glob("*-s*/eval/retrieval.json")) if a.runs.is_dir() else []:
        arm, _, seed = f.parts[-3].rpartition("-s")
        runs.setdefault(arm, {})[int(seed)] = json.loads(f.read_text())
    print("| arm | seeds | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for arm in ARMS:
        if arm not in runs:
            print(f"| {arm} | 0 | " + " | ".join("not run" for _ in METRICS) + " |")
            continue
        cells = []
        for m in METRICS:
            xs = [r[m] for r in runs[arm].values()]
            sd = f" ± {statistics.stdev(xs):.1f}" if len(xs) > 1 else ""
            cells.append(f"{statistics.mean(xs):.1f}{sd}")
        print(f"| {arm} | {','.join(map(str, sorted(runs[arm])))} | " + " | ".join(cells) + " |")
    chance = next(iter(next(iter(runs.values())).values())).get("chance", {})
    if chance:
        print("| chance | | " + " | ".join(f"{chance.get(m, float('nan')):.1f}" for m in METRICS) + " |")
    if "full" in runs:
        from mmtlab.study.runner import mean_ci95

        print("\n| arm − full (paired by seed) | seeds | " + " | ".join(METRICS) + " |")
        print("|---|---|" + "---|" * len(METRICS))
        for arm in ARMS[1:]:
            both = sorted(set(runs.get(arm, {})) & set(runs["full"]))
            if not both:
                continue
            cells = []
            for m in METRICS:
                mean, ci = mean_ci95([runs[arm][s][m] - runs["full"][s][m] for s in both])
                cells.append(f"{mean:+.1f}" + (f" ± {ci:.1f}" if ci is not None else ""))
            print(f"| {arm} | {','.join(map(str, both))} | " + " | ".join(cells) + " |")
    if a.json:
        a.json.write_text(json.dumps({arm: {str(s): r for s, r in v.items()} for arm, v in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
