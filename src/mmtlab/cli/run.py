"""`mmtlab train | demo | study | report | layout`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mmtlab.cli import UserError, app, console
from mmtlab.cli.data import _parse_styles
from mmtlab.cli.evaluate import print_retrieval
from mmtlab.config import CONFIG_DIR


@app.command()
def train(
    config: Annotated[Path | None, typer.Argument(help="run config YAML (optional with --resume)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a field: --set train.lr=3e-4")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<config name>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="check the config, the files it names and (with --resume) the run, then exit")
    ] = False,
):
    """Train a model from a run config. Writes config.yaml, tokenizer.json, checkpoints/, metrics.jsonl.

    Several GPUs or machines: torchrun --nproc-per-node 8 -m mmtlab.cli train CONFIG --out RUN_DIR

    SIGTERM saves a checkpoint and exits with code 143; --resume continues on any number of processes.
    """
    from mmtlab.config import load_config
    from mmtlab.eval.validation import Validation
    from mmtlab.train.loop import train as run_training

    if config is None and not (resume and out):
        raise UserError("give a CONFIG, or --resume with --out RUN_DIR")
    if config is not None:
        cfg = load_config(config, set_ or [])
    else:
        cfg = load_config(out / "config.yaml", set_ or [])
    run_dir = out or Path("runs") / config.stem
    if dry_run:
        from mmtlab.train.preflight import preflight

        cfg = preflight(cfg, run_dir, resume)
        m = cfg.model
        console.print(
            f"config OK: {m.arch} ({m.layout}), objectives {', '.join(cfg.objectives)}, {cfg.train.steps} steps "
            f"of {cfg.train.batch_size} -> {run_dir} (nothing written)"
        )
        return
    result = run_training(cfg, run_dir, resume=resume, validate=Validation())
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 speaks for the run
        return
    if result.interrupted:  # SIGTERM: checkpointed; 128 + 15 tells a scheduler the run is not finished
        console.print(f"stopped by SIGTERM after step {result.steps}; continue with --resume --out {run_dir}")
        raise typer.Exit(143)
    console.print(
        f"[green]trained[/] {result.steps} steps in {run_dir} (final loss {result.final_loss:.3f}, "
        f"{result.pairs_per_second:.0f} pairs/s, skipped images {result.skipped_images})"
    )


@app.command()
def study(
    spec: Annotated[Path, typer.Argument(help="study YAML (configs/studies/)")],
    out: Annotated[Path | None, typer.Option(help="study directory (default runs/studies/<name>)")] = None,
    dry_run: Annotated[bool, typer.Option(help="validate every run's config and list the cells, run nothing")] = False,
    seed: Annotated[
        list[int] | None,
        typer.Option(help="run only this seed of the study (repeatable): split a study across processes"),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(help="run only the cells with this AXIS=LABEL (repeatable: all must match), e.g. arch=coca"),
    ] = None,
):
    """Train and evaluate a grid of runs x seeds (resumable: rerun to continue), then print one table
    of mean ± 95% CI with each cell's paired difference from its baseline (the same cell with one
    axis set back to its first label: one factor at a time), and write results.json, results.md and
    report.html. A study file names its base run config, seeds, axes of overrides, the data and
    interleaved documents to build, runs to pretrain once ({pretrain.NAME}), the evaluations, the
    metrics (nested values too: fewshot.classify.scores.8) and within-cell contrasts ("A - B");
    the format is in mmtlab/study/spec.py, examples in configs/studies/."""
    from mmtlab.study import run_study
    from mmtlab.study.report import write_study_report
    from mmtlab.study.runner import StudyStopped

    try:
        out_dir = run_study(spec, out, dry_run=dry_run, seeds=seed, only=only, console=console)
    except StudyStopped as e:
        console.print(str(e))
        raise typer.Exit(143) from None
    if not dry_run:
        console.print(f"wrote {write_study_report(out_dir)}")


@app.command()
def report(path: Annotated[Path, typer.Argument(help="a run directory or a study directory")]):
    """Write a report: RUN_DIR/report.md (curves, tables, pictures) or STUDY_DIR/report.html."""
    from mmtlab.report import write_run_report
    from mmtlab.study.report import write_study_report

    if (path / "results.json").exists():
        console.print(f"wrote {write_study_report(path)}")
    elif (path / "config.yaml").exists():
        console.print(f"wrote {write_run_report(path)}")
    else:
        raise UserError(f"{path} is neither a run directory (config.yaml) nor a study directory (results.json)")


@app.command()
def layout(
    model: Annotated[str, typer.Argument(help="a model config name (configs/models) or run config path")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set model.depth=6")] = None,
):
    """Print a model's attention layout: which streams each layer's queries attend to."""
    import yaml

    from mmtlab.config import load_config
    from mmtlab.models.fusion import build_layout

    path = Path(model)
    is_run = path.suffix in (".yaml", ".yml") and path.exists() and "model" in (yaml.safe_load(path.read_text()) or {})
    cfg = load_config(path if is_run else {"model": model}, set_ or [])
    specs = build_layout(cfg.model.layout, cfg.model.depth, **cfg.model.layout_args)
    table = Table(title=f"{cfg.model.layout} ({len(specs)} layers)")
    grouped = any(s.group for s in specs)  # decoder families: which pass runs which layers
    cols = ("layer", *(("group",) if grouped else ()), "text queries see", "image queries see", "weights")
    for col in (*cols, "cross-attn", "ffn", "causal text"):
        table.add_column(col)
    for i, s in enumerate(specs):
        table.add_row(
            str(i),
            *((s.group,) if grouped else ()),
            ", ".join(s.attend.get("text", ())) or "-",
            ", ".join(s.attend.get("image", ())) or "-",
            s.weights,
            s.cross_attention or "-",
            "yes" if s.ffn else "no",
            "yes" if s.causal_text else "no",
        )
    console.print(table)


# The demo's data (see configs/runs/demo.yaml): a vocabulary small enough to learn in minutes.
DEMO_DATA = "data/emoji-scenes-demo"
DEMO_NUM_SPRITES = 30
DEMO_STYLES = "descriptive=1"


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="where to build / find emoji-scenes")] = Path(DEMO_DATA),
    num_sprites: Annotated[
        int, typer.Option(help="build the data with the N most basic sprites (0: the full vocabulary)")
    ] = DEMO_NUM_SPRITES,
    styles: Annotated[str, typer.Option(help="pretraining caption-style mixture of the build")] = DEMO_STYLES,
    out: Annotated[Path, typer.Option(help="run directory")] = Path("runs/demo"),
    config: Annotated[Path, typer.Option(help="run config")] = CONFIG_DIR / "runs" / "demo.yaml",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config field")] = None,
    fresh: Annotated[bool, typer.Option(help="delete an earlier demo run and train again")] = False,
):
    """Build the data if missing, train a small dual encoder (minutes on a laptop CPU), evaluate
    zero-shot retrieval on the test split and object knowledge (`eval zeroshot`), and write
    RUN_DIR/report.md with pictures. The default data has a small sprite vocabulary, which a few
    minutes of training can learn (docs/objects.md)."""
    from mmtlab.config import load_config
    from mmtlab.data.emoji_scenes import build_emoji_scenes
    from mmtlab.eval.runs import eval_retrieval
    from mmtlab.eval.validation import Validation
    from mmtlab.report import write_run_report
    from mmtlab.rundir import checkpoint_step, latest_checkpoint
    from mmtlab.train.loop import train as run_training

    cfg = load_config(config, [f"data.root={data}", *(set_ or [])])
    console.rule("[bold]1/3 data: emoji-scenes")
    build_emoji_scenes(data, num_sprites=num_sprites or None, pretrain_styles=_parse_styles(styles))
    if fresh and out.exists():
        shutil.rmtree(out)
    console.rule("[bold]2/3 training a dual encoder")
    ckpt = latest_checkpoint(out)
    done_step = checkpoint_step(ckpt) if ckpt else 0
    if ckpt and done_step >= cfg.train.steps:
        console.print(f"{out} is already trained ({done_step} steps); use --fresh to train again")
    else:
        result = run_training(cfg, out, resume=ckpt is not None, validate=Validation())
        console.print(f"trained {result.steps} steps at {result.pairs_per_second:.0f} pairs/s")
    console.rule("[bold]3/3 zero-shot retrieval on the test split, and object knowledge")
    result = eval_retrieval(out, cfg.data.test_split)
    print_retrieval(result, f"zero-shot retrieval, test ({result['n_images']} images x 5 captions)")
    from mmtlab.eval.runs import eval_zeroshot

    zs = eval_zeroshot(out)
    console.print(
        f"zero-shot classification of single sprites: top-1 {zs['seen_within_top1']:.1f}% on seen sprites "
        f"(chance {zs['seen_within_chance_top1']:.1f}), {zs.get('heldout_within_top1', 0):.1f}% on held-out "
        f"(chance {zs.get('heldout_within_chance_top1', 0):.1f}); controlled retrieval (same background and "
        f"count) t2i R@1 {zs['controlled_t2i_r1']:.1f}% (chance {zs['controlled_chance_r1']:.1f})"
    )
    report_path = write_run_report(out)
    console.print(f"report: {report_path}\nretrieval examples: {out / 'eval' / 'retrieval_examples.png'}")
