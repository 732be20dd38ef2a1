"""A study's HTML report (one self-contained file): the settings, the results table (the same
numbers and decimals as results.md) and one chart per metric with 95% CIs, the seeds behind them
and the chance or majority-answer line where the evaluation reports one."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmtlab.io import atomic_write_text  # noqa: E402
from mmtlab.study.runner import format_mean_ci  # noqa: E402

# Metrics in percent (recall, accuracy) live in [0, 100]; a t-interval around a mean near either
# end can cross it, so bars are clipped there and the chart says so.
PERCENT_BOUNDS = (0.0, 100.0)


def is_percent(metric: str) -> bool:
    key = metric.split(".", 1)[-1]
    return key.startswith(("i2t_r", "t2i_r", "r1", "r5", "r10")) or key.endswith("accuracy") or key == "rsum"


def _bar_chart(result: dict, metric: str) -> str | None:
    rows = [r for r in result["rows"] if metric in r["metrics"]]
    if not rows:
        return None
    values = [v for r in rows for v in r["metrics"][metric]["values"]]
    if all(abs(v) < 1e-6 for v in values):
        return None  # nothing to draw: the table says 0
    names = [r["name"] for r in rows]
    means = [r["metrics"][metric]["mean"] for r in rows]
    cis = [r["metrics"][metric]["ci95"] or 0.0 for r in rows]  # one seed: no error bar
    lo_hi = [(m - c, m + c) for m, c in zip(means, cis)]
    clipped = False
    if is_percent(metric) and not metric.endswith("rsum"):
        lo, hi = PERCENT_BOUNDS
        clipped = any(a < lo or b > hi for a, b in lo_hi)
        lo_hi = [(max(a, lo), min(b, hi)) for a, b in lo_hi]
    err = [[m - a for m, (a, _) in zip(means, lo_hi)], [b - m for m, (_, b) in zip(means, lo_hi)]]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.5))
    y = list(range(len(rows)))
    ax.barh(y, means, xerr=err, color="#4575b4", ecolor="#333333", capsize=3)
    for yi, r in zip(y, rows):  # individual seeds, so a reader sees the spread behind the CI
        vals = r["metrics"][metric]["values"]
        ax.scatter(vals, [yi] * len(vals), color="#d73027", s=10, zorder=3)
    refs = {r["metrics"][metric]["reference"]["value"]: r["metrics"][metric]["reference"]["label"]
            for r in rows if "reference" in r["metrics"][metric]}  # fmt: skip
    for value, label in refs.items():
        ax.axvline(value, color="#999999", ls="--", lw=1, label=f"{label} {value:.3g}")
    if refs:
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric}: mean ± 95% CI, dots = seeds", fontsize=8)
    if clipped:
        ax.set_title("intervals clipped to the metric's range [0, 100]", fontsize=8, color="#666666")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_study_report(study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    result = json.loads((study_dir / "results.json").read_text())
    axes, metrics = result["axes"], result["metrics"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*axes, "seeds", *metrics, "runs"])
    body = ""
    for r in result["rows"]:
        cells = [html.escape(r["cell"].get(a, "")) for a in axes] + [str(r["seeds"])]
        cells += [format_mean_ci(r["metrics"].get(m)) for m in metrics]  # as results.md prints them
        links = " ".join(
            f'<a href="{html.escape(run)}/">{html.escape(run.rsplit("/", 1)[-1])}</a>' for run in r.get("runs", [])
        )
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in [*cells, links]) + "</tr>\n"
    charts = ""
    for m in metrics:
        chart = _bar_chart(result, m)
        charts += f"<h3>{html.escape(m)}</h3>" + (
            f'<img src="data:image/png;base64,{chart}" alt="{html.escape(m)}">' if chart else
            "<p><i>every value is 0 (or missing): no chart</i></p>"
        )  # fmt: skip
    spec = study_dir / "study.yaml"
    settings = f"<details><summary>study.yaml</summary><pre>{html.escape(spec.read_text())}</pre></details>" if (
        spec.exists()
    ) else ""  # fmt: skip
    title = html.escape(result["study"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mmtlab study {title}</title>
<style>
body{{font-family:sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}}
.scroll{{overflow-x:auto;max-width:100%}} table{{border-collapse:collapse;font-size:14px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}}
td:first-child,th:first-child{{text-align:left}} img{{max-width:100%}} pre{{background:#f6f6f6;padding:1em}}
</style></head><body><h1>Study {title}</h1>
<p>Mean ± 95% confidence interval (Student t, n = seeds) over seeds, as in results.md; one seed shows the
value alone. Runs are linked by seed (each holds config.yaml, metrics.jsonl, eval/*.json).</p>
{settings}
<div class="scroll"><table><tr>{head}</tr>
{body}</table></div>{charts}</body></html>
"""
    out = study_dir / "report.html"
    atomic_write_text(out, page)
    return out
