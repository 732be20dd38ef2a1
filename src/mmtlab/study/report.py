"""A study's HTML report: the results table and one bar chart per metric with 95% CI error bars."""

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


def _bar_chart(result: dict, metric: str) -> str:
    rows = [r for r in result["rows"] if metric in r["metrics"]]
    names = [r["name"] for r in rows]
    means = [r["metrics"][metric]["mean"] for r in rows]
    cis = [r["metrics"][metric]["ci95"] or 0.0 for r in rows]  # one seed: no error bar
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.2))
    y = range(len(rows))
    ax.barh(list(y), means, xerr=cis, color="#4575b4", ecolor="#333333", capsize=3)
    for yi, r in zip(y, rows):  # individual seeds, so a reader sees the spread behind the CI
        vals = r["metrics"][metric]["values"]
        ax.scatter(vals, [yi] * len(vals), color="#d73027", s=10, zorder=3)
    ax.set_yticks(list(y))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (mean ± 95% CI; dots = seeds)")
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
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [*axes, "seeds", *metrics])
    body = ""
    for r in result["rows"]:
        cells = [html.escape(r["cell"].get(a, "")) for a in axes] + [str(r["seeds"])]
        for m in metrics:
            v = r["metrics"].get(m)
            cells.append(format_mean_ci(v, 2))
        body += "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>\n"
    charts = "".join(
        f'<h3>{html.escape(m)}</h3><img src="data:image/png;base64,{_bar_chart(result, m)}">' for m in metrics
    )
    title = html.escape(result["study"])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>mmtlab study {title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}</style>
</head><body><h1>Study {title}</h1>
<p>Mean ± 95% confidence interval (Student t) over seeds.</p>
<table><tr>{head}</tr>
{body}</table>{charts}</body></html>
"""
    out = study_dir / "report.html"
    atomic_write_text(out, page)
    return out
