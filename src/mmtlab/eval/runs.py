"""Evaluations of a trained run directory, by name: each writes RUN_DIR/eval/<name>.json.

The CLI (`mmtlab eval <name>`) and the study runner both call these; a new evaluation is a
function here plus an entry in EVALS.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmtlab.io import atomic_write_json


class EvalError(RuntimeError):
    """The run cannot be evaluated this way (e.g. no contrastive head for dual retrieval)."""


def load_run(run_dir: Path, data: Path | None = None):
    """The run's model (with .tokenizer and .run_config), optionally pointed at another dataset."""
    import mmtlab

    model = mmtlab.load(run_dir)
    cfg = model.run_config
    if data is not None:
        cfg.data.root, cfg.data.annotations, cfg.data.images = str(data), None, None
    return model, cfg


def eval_retrieval(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    examples: bool = True,
    progress: bool = True,
    image_size: int | None = None,
) -> dict:
    """Dual-encoder zero-shot retrieval; also draws eval/retrieval_examples.png. `image_size`:
    evaluate at another resolution (the positional grid is resampled; see image.cpe)."""
    from mmtlab.data.sources import load_split
    from mmtlab.eval.examples import plot_text_to_image
    from mmtlab.eval.retrieval import embed_records, retrieval_metrics

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    if model.contrastive is None:
        raise EvalError(
            f"{run_dir}: the model has no contrastive head, so dual-encoder retrieval does not apply; "
            "evaluate it with `mmtlab eval mlm`"
        )
    records = load_split(cfg.data, split)
    if image_size is not None:
        model.cfg.image.size = image_size
    emb = embed_records(model, model.tokenizer, records, batch_size=cfg.eval.batch_size, progress=progress)
    result = {"split": split, "mode": "dual", "image_size": model.cfg.image.size, **retrieval_metrics(emb)}
    name = "retrieval.json" if image_size is None else f"retrieval_{image_size}px.json"
    atomic_write_json(run_dir / "eval" / name, result)
    if examples:
        plot_text_to_image(emb, records, run_dir / "eval" / "retrieval_examples.png")
    return result


def eval_mlm(run_dir: Path, split: str = "test", data: Path | None = None, progress: bool = True) -> dict:
    """Masked-token loss in bits with and without the image."""
    from mmtlab.data.sources import load_split
    from mmtlab.eval.mlm import evaluate_mlm

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    if model.mlm is None:
        raise EvalError(f"{run_dir}: the model has no MLM head (outputs: {cfg.model.outputs})")
    records = load_split(cfg.data, split)
    result = {
        "split": split,
        **evaluate_mlm(model, model.tokenizer, records, batch_size=cfg.eval.batch_size, progress=progress),
    }
    atomic_write_json(run_dir / "eval" / "mlm.json", result)
    return result


def _require_decoder(model, run_dir: Path, what: str):
    if not hasattr(model, "generate"):
        raise EvalError(
            f"{run_dir}: {what} needs a model with a text decoder (model.arch mammut, coca or dual_captioner), "
            f"this one is {model.cfg.arch!r}"
        )


def eval_caption(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    method: str = "beam",
    num_beams: int = 3,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Caption the split's images; BLEU-4 and CIDEr against their reference captions."""
    from mmtlab.data.sources import load_split
    from mmtlab.eval.captioning import evaluate_captioning

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    _require_decoder(model, run_dir, "captioning")
    records = load_split(cfg.data, split)
    result = {
        "split": split,
        "method": method,
        "num_beams": num_beams if method == "beam" else None,
        **evaluate_captioning(
            model,
            model.tokenizer,
            records,
            batch_size=cfg.eval.batch_size,
            max_images=max_images,
            progress=progress,
            method=method,
            num_beams=num_beams,
        ),
    }
    atomic_write_json(run_dir / "eval" / "caption.json", result)
    return result


def eval_vqa(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    finetune_steps: int | None = None,
    finetune_lr: float | None = None,
    max_questions: int | None = None,
    progress: bool = True,
) -> dict:
    """Generative VQA accuracy by question type. With `finetune_steps`, the run is first fine-tuned
    on VQA questions of its training split (into RUN_DIR/vqa), and that model is evaluated."""
    from mmtlab.data.emoji_scenes.vqa import make_questions
    from mmtlab.data.sources import load_split
    from mmtlab.eval.vqa import evaluate_vqa, finetune_vqa

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    _require_decoder(model, run_dir, "VQA")
    evaluated = run_dir
    if finetune_steps:
        evaluated = finetune_vqa(run_dir, finetune_steps, lr=finetune_lr, progress=progress)
        model, cfg = load_run(evaluated, data)
    records = load_split(cfg.data, split)
    questions = make_questions(records)[:max_questions]
    result = {
        "split": split,
        "model": str(evaluated),
        "finetune_steps": finetune_steps,
        **evaluate_vqa(model, model.tokenizer, records, questions, batch_size=cfg.eval.batch_size, progress=progress),
    }
    atomic_write_json(run_dir / "eval" / "vqa.json", result)
    return result


EVALS: dict[str, Callable[..., dict]] = {
    "retrieval": eval_retrieval,
    "mlm": eval_mlm,
    "caption": eval_caption,
    "vqa": eval_vqa,
}
