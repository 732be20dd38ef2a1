"""The cross-modal ablation result as a markdown table and a bar plot (RUN_DIR/eval/ablation.*)."""

from __future__ import annotations

from pathlib import Path

from mmtlab.diagnostics.ablation import TEXT_ABLATIONS, VISION_ABLATIONS
from mmtlab.io import atomic_write_bytes


def _cell(v: dict | None) -> str:
    if not v:
        return "–"
    lo, hi = v["ci95"]
    return f"{v['bits']:.3f} [{lo:.3f}, {hi:.3f}]"


def ablation_rows(result: dict) -> list[tuple[str, str, int, list[str]]]:
    """(direction, unit, n, cells) rows: vision-for-language none/object/all (+ text-only), and
    language-for-vision none/phrase/all against silver and gold labels."""
    rows = []
    v = result.get("vision_for_language")
    if v:
        rows.append(("vision→language (MLM)", v["unit"], v["n_phrases"], [_cell(v[a]) for a in VISION_ABLATIONS]))
    base = result.get("text_only_baseline")
    if base:
        rows.append(("text-only model (MLM)", "bits per masked phrase token", base["n_phrases"],
                     [_cell(base), "", ""]))  # fmt: skip
    lv = result.get("language_for_vision")
    if lv:
        for lab, n in (("silver", lv["n_phrases"]), ("gold", lv["n_gold"])):
            if lv[lab]:
                what = "KL to detector" if lab == "silver" else "CE to gold class"
                rows.append((f"language→vision {lab} ({what})", lv["unit"], n,
                             [_cell(lv[lab][a]) for a in TEXT_ABLATIONS]))  # fmt: skip
    return rows


def ablation_markdown(result: dict) -> str:
    head = (
        f"# Cross-modal input ablation: {result['run']}\n\n"
        f"split {result['split']}, {result['n_phrases']} grounded phrases, alignment {result['alignment']} > "
        f"{result['threshold']}, mean [95% bootstrap CI over phrases], bits (lower is better)\n\n"
        "| direction | n | none | object / phrase | all |\n|---|---:|---:|---:|---:|\n"
    )
    body = "".join(f"| {d} | {n} | " + " | ".join(c) + " |\n" for d, _, n, c in ablation_rows(result))
    lv = result.get("language_for_vision")
    note = ""
    if lv and lv.get("detector_top1_is_gold") is not None:
        agree = 100 * lv["detector_top1_is_gold"]
        note = f"\nThe detector's top class is the gold class for {agree:.1f}% of the targets.\n"
    return head + body + note


def plot_ablation(result: dict, path: str | Path) -> Path:
    """Bars of the loss increase over the intact input (bits, paired 95% CIs), one panel per
    direction and label kind: the absolute losses differ by bits, the effects by hundredths."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    v = result.get("vision_for_language")
    if v:
        panels.append(("vision→language (MLM)", VISION_ABLATIONS, v))
    lv = result.get("language_for_vision")
    if lv:
        for lab in ("silver", "gold"):
            if lv[lab]:
                panels.append((f"language→vision, {lab}", TEXT_ABLATIONS, lv[lab]))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.2 * max(1, len(panels)), 3.3), squeeze=False)
    for ax, (title, names, stats) in zip(axes[0], panels):
        deltas = [stats[f"{a}_minus_none"] for a in names[1:]]
        means = [d["bits"] for d in deltas]
        err = [[m - d["ci95"][0] for m, d in zip(means, deltas)], [d["ci95"][1] - m for m, d in zip(means, deltas)]]
        ax.bar(names[1:], means, yerr=err, capsize=4, color=["#dd8452", "#c44e52"])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{title}\nintact: {stats['none']['bits']:.2f} bits", fontsize=9)
        ax.set_xlabel("ablated")
        ax.set_ylabel("loss increase (bits)", fontsize=8)
        base = result.get("text_only_baseline")
        if base and names is VISION_ABLATIONS:
            ax.axhline(base["bits"] - stats["none"]["bits"], color="k", ls="--", lw=1, label="text-only model")
            ax.legend(fontsize=7)
    fig.suptitle(str(result["run"]), fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
