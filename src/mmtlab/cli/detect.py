"""`mmtlab finetune detect | eval detect | detect`: open-vocabulary detection on a pretrained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mmtlab.cli import UserError, app, console, eval_app

finetune_app = typer.Typer(
    help="Fine-tune a trained run on a downstream task.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(finetune_app, name="finetune")

Data = Annotated[Path | None, typer.Option(help="dataset root whose detection/ split to use (default: the run's)")]


@finetune_app.command("detect")
def finetune_detect(
    run_dir: Annotated[Path, typer.Argument(help="a pretrained run with a contrastive text side")],
    out: Annotated[Path | None, typer.Option(help="detector directory (default: RUN_DIR/detect)")] = None,
    steps: Annotated[int, typer.Option(help="fine-tuning steps")] = 600,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 32,
    lr: Annotated[float, typer.Option(help="peak learning rate (warmup 10%, cosine)")] = 3e-4,
    image_size: Annotated[int | None, typer.Option(help="detection resolution (default: the data's)")] = None,
    data: Data = None,
    annotations: Annotated[
        Path | None, typer.Option(help="a COCO / LVIS training file (base categories only) instead of emoji-scenes")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="folder the annotations' file_names are relative to")] = None,
    seed: Annotated[int, typer.Option(help="seed of the head initialisation and batch order")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all cores)")] = None,
):
    """Fine-tune the run's image tower as an OWL-ViT-style detector on the base categories: per-token
    boxes and class embeddings, classes = the frozen text encoder's embeddings of the names."""
    from mmtlab.eval.runs import load_run, require_eval
    from mmtlab.train.detect import finetune_detect as run

    if steps < 1 or batch_size < 1:
        raise UserError("--steps and --batch-size must be at least 1")
    require_eval(load_run(run_dir)[1], "detect", run_dir)
    det = run(run_dir, out, steps=steps, batch_size=batch_size, lr=lr, image_size=image_size, data=data,
              annotations=annotations, images=images, seed=seed, threads=threads)  # fmt: skip
    console.print(f"wrote the detector to {det}")


@eval_app.command("detect")
def eval_detect(
    run_dir: Annotated[Path, typer.Argument(help="a detector directory, or a pretrained run (its detect/)")],
    split: Annotated[str, typer.Option(help="emoji-scenes detection split")] = "detect_test",
    data: Data = None,
    finetune_steps: Annotated[
        int | None,
        typer.Option(help="first fine-tune the run on the base categories for N steps (into RUN_DIR/detect)"),
    ] = None,
    finetune_lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate")] = None,
    max_images: Annotated[int | None, typer.Option(help="evaluate the first N images")] = None,
    threads: Annotated[int | None, typer.Option(help="fine-tuning: torch threads")] = None,
):
    """Open-vocabulary detection: AP and AP50 (pycocotools) for base, novel and held-out categories,
    every name queried at once -> RUN_DIR/eval/detect.json."""
    from mmtlab.evaluate import eval_detect as run

    extra = {"threads": threads} if threads else {}
    r = run(run_dir, split, data, finetune_steps, finetune_lr, max_images, **extra)
    table = Table(title=f"open-vocabulary detection on {split} ({r['n_images']} images, {r['image_size']} px)")
    for col in ("categories", "AP", "AP50", "boxes"):
        table.add_column(col, justify="right")
    for name, v in r["ap"].items():
        fmt = lambda x: "-" if x is None else f"{100 * x:.1f}"  # noqa: E731
        table.add_row(name, fmt(v["AP"]), fmt(v["AP50"]), str(v["boxes"]))
    console.print(table)
    console.print(f"wrote {run_dir / 'eval' / 'detect.json'}")


@app.command()
def detect(
    run_dir: Annotated[Path, typer.Argument(help="a detector directory, or a pretrained run with detect/")],
    image: Annotated[Path, typer.Option(help="image file")],
    queries: Annotated[str, typer.Option(help='comma-separated names to look for, e.g. "cat, red apple"')],
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: IMAGE stem + _detect.png)")] = None,
    threshold: Annotated[float, typer.Option(help="keep boxes scoring at least this")] = 0.3,
):
    """Find any named things in an image: boxes and scores drawn onto a PNG."""
    import mmtlab
    from mmtlab.data.pairs import BAD_IMAGE_ERRORS
    from mmtlab.eval.detect import detect_image, draw_detections

    names = [q.strip() for q in queries.split(",") if q.strip()]
    if not names:
        raise UserError("--queries: give at least one name")
    det_dir = run_dir if (run_dir / "detector.json").exists() else run_dir / "detect"
    detector = mmtlab.load_detector(det_dir)
    try:
        found = detect_image(detector, image, names, threshold)
    except BAD_IMAGE_ERRORS as e:
        raise UserError(f"--image {image}: cannot read it ({e})") from None
    out = out or image.with_name(image.stem + "_detect.png")
    draw_detections(image, found, out)
    for d in found:
        console.print(f"  {d['query']:<24} {d['score']:.2f}  {d['box']}", highlight=False)
    console.print(f"{len(found)} boxes at score >= {threshold}; wrote {out}")
