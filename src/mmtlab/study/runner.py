"""Run a study: every cell x seed trained and evaluated, resumably, then aggregated.

A finished run leaves `study_run.json` (its metrics); rerunning the study skips it. An interrupted
run resumes from its last checkpoint. Results are aggregated over seeds as mean +- 95% CI.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

from rich.console import Console

from mmtlab.io import atomic_write_json, atomic_write_text
from mmtlab.progress import stderr
from mmtlab.study.spec import (
    Cell,
    StudySpec,
    cell_config,
    check_calls,
    check_run_dirs,
    expand,
    load_study,
    pretrain_configs,
    split_contrast,
    with_pretrained,
)


def mean_ci95(values: list[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95% confidence interval (t distribution); None for n = 1
    (one seed has no interval, and a printed "± 0.0" would claim one)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None
    from scipy.stats import t

    return mean, float(t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)


class StudyStopped(Exception):
    """A run was stopped by SIGTERM: it is checkpointed but unfinished, so it is neither evaluated
    nor marked done, and the study stops too (a scheduler asked it to)."""


def run_dir_of(out: Path, cell: Cell, seed: int) -> Path:
    return out / "runs" / cell.dirname / f"seed_{seed}"


def run_study(
    path: str | Path,
    out: str | Path | None = None,
    *,
    dry_run: bool = False,
    seeds: list[int] | None = None,
    only: list[str] | None = None,
    console: Console | None = None,
) -> Path:
    """Train and evaluate every cell x seed of the study at `path` into `out`. `seeds`: run only
    these of the study's seeds; `only`: only the cells with every given `axis=label` (two
    processes, or two machines sharing a folder, can split a study by seed or by cell without
    sharing a run); the aggregate always covers every run finished on disk."""
    from mmtlab.config import ConfigError
    from mmtlab.data.emoji_scenes import build_emoji_scenes
    from mmtlab.data.interleaved import build_interleaved
    from mmtlab.evaluate import EVALS
    from mmtlab.rundir import checkpoint_step, latest_checkpoint
    from mmtlab.train.loop import train
    from mmtlab.train.preflight import check_layout

    console = console or stderr
    spec, base = load_study(path)
    out = Path(out) if out else Path("runs") / "studies" / spec.name
    cells = expand(spec)
    # Everything is checked before anything is written: run directories, evaluations, data builds.
    check_run_dirs(spec, cells, out, Path(path))
    check_calls(spec, Path(path))
    if seeds is not None and (unknown := sorted(set(seeds) - set(spec.seeds))):
        raise ConfigError(f"{path}: seeds {unknown} are not among the study's seeds {spec.seeds}")
    run_seeds = [s for s in spec.seeds if seeds is None or s in seeds]
    selection = [tuple(item.partition("=")[::2]) for item in only or []]
    for axis, label in selection:
        if axis not in spec.axes or label not in spec.axes[axis]:
            raise ConfigError(f"{path}: --only {axis}={label}: not an axis=label of the study ({', '.join(spec.axes)})")
    run_cells = [c for c in cells if c.matches(selection)]
    # Validate every run's config before spending hours on the first ones.
    pretrain = pretrain_configs(spec, Path(path))
    pretrained = {name: out / "pretrain" / name for name in pretrain}
    # Seed-major: every cell's first seed runs before any cell's second, so an interrupted study
    # already has the whole grid at one seed (and each later seed narrows every interval at once).
    try:
        configs = {(c, s): cell_config(spec, base, c, s, pretrained) for s in run_seeds for c in run_cells}
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for (cell, _), cfg in [*configs.items(), *(((None, name), cfg) for name, cfg in pretrain.items())]:
        try:
            check_layout(cfg)  # layout arguments fail only when the model is built: check them now
        except ConfigError as e:
            raise ConfigError(f"{path}: {'pretrain' if cell is None else f'study cell {cell.name!r}'}: {e}") from None
    total = len(configs)
    grid = f"{len(run_cells)} cells x {len(run_seeds)} seeds = {total} runs"
    console.print(f"study [bold]{spec.name}[/]: {grid} -> {out}")
    if dry_run:
        for c in run_cells:
            console.print(f"  {c.name}: {' '.join(c.overrides) or '(base)'}")
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, out / "study.yaml")
    for data_dir, kwargs in spec.data.items():
        build_emoji_scenes(data_dir, **kwargs)
    for docs_dir, kwargs in spec.documents.items():
        build_interleaved(docs_dir, **kwargs)
    for name, cfg in pretrain.items():
        ckpt = latest_checkpoint(pretrained[name])
        if ckpt is None or checkpoint_step(ckpt) < cfg.train.steps:
            console.rule(f"pretraining {name}")
            if _train(train, cfg, pretrained[name], ckpt is not None, console).interrupted:
                raise StudyStopped(f"SIGTERM: stopped during {pretrained[name]} (checkpointed); rerun the study")
    for i, ((cell, seed), cfg) in enumerate(configs.items(), 1):
        run_dir = run_dir_of(out, cell, seed)
        done = run_dir / "study_run.json"
        # A finished run is not retrained; an evaluation added to the study since is run on it.
        metrics = json.loads(done.read_text())["metrics"] if done.exists() else {}
        todo = [name for name in spec.evals if name not in metrics]
        if done.exists() and not todo:
            console.print(f"[dim][{i}/{total}] {cell.name}, seed {seed}: done[/]")
            continue
        console.rule(f"[{i}/{total}] {cell.name}, seed {seed}" + (f": evaluating {', '.join(todo)}" if metrics else ""))
        ckpt = latest_checkpoint(run_dir)
        unfinished = ckpt is None or checkpoint_step(ckpt) < cfg.train.steps
        if unfinished and _train(train, cfg, run_dir, ckpt is not None, console).interrupted:
            raise StudyStopped(f"SIGTERM: stopped during {run_dir} (checkpointed); rerun the study to continue")
        for name in todo:
            params = {k: with_pretrained(v, pretrained) for k, v in spec.evals[name].items()}
            metrics[name] = EVALS[name](run_dir, **params, progress=False)
        atomic_write_json(done, {"cell": dict(cell.labels), "seed": seed, "metrics": metrics})
    aggregate(out, spec, cells, console)
    return out


def _train(train, cfg, run_dir: Path, resume: bool, console: Console):
    from mmtlab.eval.validation import Validation

    try:
        return train(cfg, run_dir, resume=resume, console=console, validate=Validation())
    except KeyboardInterrupt:  # Ctrl-C: the run is checkpointed (train/signals.py)
        console.print("Ctrl-C: the study stopped; rerun it to continue (finished runs are kept)")
        raise


def reference_value(metrics: dict, name: str) -> dict | None:
    """What a metric is compared with, when its evaluation reports it: chance (retrieval) or the
    majority answer (VQA by question type) -> {"label": ..., "value": ...}."""
    ev, key = name.split(".", 1)
    found = metrics.get(ev, {})
    chance = found.get("chance")
    if isinstance(chance, dict) and isinstance(chance.get(key), int | float):
        return {"label": "chance", "value": float(chance[key])}
    majority = found.get("majority_answer")
    if isinstance(majority, dict) and key.endswith("_accuracy") and key[: -len("_accuracy")] in majority:
        return {"label": "majority answer", "value": float(majority[key[: -len("_accuracy")]])}
    return None


def metric_value(metrics: dict, name: str) -> float | None:
    """The metric, or None where the evaluation does not produce it for this run (e.g. no
    language-for-vision numbers for a model without a masked-region head)."""
    ev, key = name.split(".", 1)
    value = metrics.get(ev, {}).get(key)
    if value is None:  # a nested result, e.g. fewshot.classify.scores.8
        value = metrics
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def aggregate(out: Path, spec: StudySpec, cells: list[Cell] | None = None, console: Console | None = None) -> dict:
    """Mean +- 95% CI over seeds for every cell and metric -> results.json and results.md."""
    cells = cells if cells is not None else expand(spec)
    rows = []
    for cell in cells:
        per_seed = []
        for seed in spec.seeds:
            f = run_dir_of(out, cell, seed) / "study_run.json"
            if f.exists():
                per_seed.append((seed, json.loads(f.read_text())["metrics"]))
        runs = [str(run_dir_of(out, cell, s).relative_to(out)) for s in spec.seeds]
        row = {"cell": dict(cell.labels), "name": cell.name, "seeds": len(per_seed), "runs": runs, "metrics": {}}
        for m in spec.metrics:
            found = [(s, v) for s, r in per_seed if (v := metric_value(r, m)) is not None]
            if found:
                values = [v for _, v in found]
                mean, ci = mean_ci95(values)
                row["metrics"][m] = {"mean": mean, "ci95": ci, "values": values, "seeds": [s for s, _ in found]}
                ref = reference_value(per_seed[0][1], m)
                if ref is not None:
                    row["metrics"][m]["reference"] = ref
        rows.append(row)
    result = {"study": spec.name, "axes": list(spec.axes), "metrics": spec.metrics, "rows": rows}
    result["paired"] = paired_differences(rows, spec.metrics, spec.seeds)
    if spec.contrasts:
        result["contrasts"] = within_cell_contrasts(rows, spec.contrasts, spec.seeds)
    atomic_write_json(out / "results.json", result)
    atomic_write_text(out / "results.md", results_markdown(result))
    if console is not None:
        print_results(result, console)
    return result


def paired_differences(rows: list[dict], metrics: list[str], seeds: list[int]) -> list[dict]:
    """Each cell minus its baseline, seed by seed: the mean difference and its 95% CI over the seeds
    both ran. The baseline changes one factor: the same cell with its first axis that is not at the
    axis's first label set back to it. In a layout x loss grid each layout is compared with the first
    layout under the same losses, and the first layout's other losses with its first loss; in a
    one-axis study every cell is compared with the first. Seeds share data order and initialisation
    draws, so a paired interval is narrower than the two cells' intervals side by side whenever
    seeds move both alike."""
    if not rows:
        return []
    first = rows[0].get("cell") or {}

    def baseline_of(row: dict) -> dict | None:
        cell = row.get("cell") or {}
        if not first or cell.keys() != first.keys():
            return rows[0]
        axis = next((a for a in first if cell[a] != first[a]), None)
        if axis is None:
            return row
        want = {**cell, axis: first[axis]}
        return next((r for r in rows if r.get("cell") == want), None)

    out = []
    for row in rows:
        base = baseline_of(row)
        if base is None or base is row:
            continue
        pairs = {m: _paired(row["metrics"].get(m), base["metrics"].get(m), seeds) for m in metrics}
        diffs = {m: d for m, d in pairs.items() if d is not None}
        if not diffs:  # the baseline (or this cell) has not run yet
            continue
        n = max(len(v["seeds"]) for v in diffs.values())
        out.append({"name": row["name"], "baseline": base["name"], "seeds": n, "metrics": diffs})
    return out


def _paired(a: dict | None, b: dict | None, seeds: list[int]) -> dict | None:
    """a − b seed by seed over the seeds both have: mean, 95% CI, the differences; None if none."""
    if not a or not b:
        return None
    x, y = dict(zip(a["seeds"], a["values"])), dict(zip(b["seeds"], b["values"]))
    both = [s for s in seeds if s in x and s in y]
    if not both:
        return None
    d = [x[s] - y[s] for s in both]
    mean, ci = mean_ci95(d)
    return {"mean": mean, "ci95": ci, "values": d, "seeds": both}


def within_cell_contrasts(rows: list[dict], contrasts: list[str], seeds: list[int]) -> list[dict]:
    """Each contrast "A - B" of two metrics inside each cell, seed by seed (a model against its
    blind control, 16 shots against 0): mean difference and 95% CI."""
    out = []
    for row in rows:
        diffs = {}
        for c in contrasts:
            a, b = split_contrast(c)
            if (d := _paired(row["metrics"].get(a), row["metrics"].get(b), seeds)) is not None:
                diffs[c] = d
        if diffs:
            n = max(len(v["seeds"]) for v in diffs.values())
            out.append({"name": row["name"], "seeds": n, "metrics": diffs})
    return out


def short_names(metrics: list[str]) -> list[str]:
    """Column names: each metric without its evaluation's name, unless two evaluations share the
    rest (fewshot.classify.scores.8 and fewshot_blind.classify.scores.8 keep theirs)."""
    rest = [m.split(".", 1)[1] for m in metrics]
    return [r if rest.count(r) == 1 else m for m, r in zip(metrics, rest)]


def format_mean_ci(v: dict | None, digits: int | None = None) -> str:
    """The mean ± CI of an aggregated metric; just the mean for one seed; "–" when missing.
    Default digits: 1, or 2 for values under 1 (bits of an ablation effect, not "0.0" / "-0.0"),
    and up to 3 where the interval would otherwise print as "± 0.0"."""
    if not v:
        return "–"
    if digits is None:
        digits = 1 if abs(v["mean"]) >= 1 else 2
        if v["ci95"] and v["ci95"] < 10**-digits:  # a tight interval keeps its first digit (a loss of 1.048 ± 0.005)
            digits = min(3, -math.floor(math.log10(v["ci95"])))
    if v["ci95"] is None:
        return f"{v['mean']:.{digits}f}"
    return f"{v['mean']:.{digits}f} ± {v['ci95']:.{digits}f}"


def _markdown_table(head: list[str], rows: list[list[str]], left: int) -> str:
    """A Markdown table whose first `left` columns align left and the rest right (the numbers)."""
    text = "| " + " | ".join(head) + " |\n"
    text += "|" + "---|" * left + "---:|" * (len(head) - left) + "\n"
    return text + "".join("| " + " | ".join(row) + " |\n" for row in rows)


def results_markdown(result: dict) -> str:
    axes, metrics = result["axes"], result["metrics"]
    rows = [[r["cell"].get(a, "") for a in axes] + [str(r["seeds"])] +
            [format_mean_ci(r["metrics"].get(m)) for m in metrics] for r in result["rows"]]  # fmt: skip
    text = f"# Study {result['study']}\n\nmean ± 95% CI over seeds\n\n"
    text += _markdown_table([*axes, "seeds", *short_names(metrics)], rows, left=len(axes) + 1)
    paired = result.get("paired") or []
    if paired:
        text += "\n## Paired differences (cell − baseline, seed by seed; mean ± 95% CI)\n\n"
        rows = [[p["name"], p["baseline"], str(p["seeds"])] + [format_mean_ci(p["metrics"].get(m)) for m in metrics]
                for p in paired]  # fmt: skip
        text += _markdown_table(["cell", "baseline", "seeds", *short_names(metrics)], rows, left=2)
    contrasts = result.get("contrasts") or []
    if contrasts:
        names = list(dict.fromkeys(c for r in contrasts for c in r["metrics"]))
        text += "\n## Within each cell (A − B, seed by seed; mean ± 95% CI)\n\n"
        rows = [[r["name"], str(r["seeds"])] + [format_mean_ci(r["metrics"].get(c)) for c in names] for r in contrasts]
        text += _markdown_table(["cell", "seeds", *names], rows, left=1)
    return text


def print_results(result: dict, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"study {result['study']} (mean ± 95% CI over seeds)")
    for a in result["axes"]:
        table.add_column(a)
    table.add_column("seeds", justify="right")
    for name in short_names(result["metrics"]):
        table.add_column(name, justify="right")
    for r in result["rows"]:
        vals = [format_mean_ci(r["metrics"].get(m)) for m in result["metrics"]]
        table.add_row(*[r["cell"].get(a, "") for a in result["axes"]], str(r["seeds"]), *vals)
    console.print(table)
    paired = result.get("paired") or []
    if paired:
        table = Table(title="paired differences: cell − baseline, seed by seed (mean ± 95% CI)")
        table.add_column("cell")
        table.add_column("baseline")
        table.add_column("seeds", justify="right")
        for name in short_names(result["metrics"]):
            table.add_column(name, justify="right")
        for p in paired:
            vals = [format_mean_ci(p["metrics"].get(m)) for m in result["metrics"]]
            table.add_row(p["name"], p["baseline"], str(p["seeds"]), *vals)
        console.print(table)
