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
    run_dir: Path, split: str = "test", data: Path | None = None, examples: bool = True, progress: bool = True
) -> dict:
    """Dual-encoder zero-shot retrieval; also draws eval/retrieval_examples.png."""
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
    emb = embed_records(model, model.tokenizer, records, batch_size=cfg.eval.batch_size, progress=progress)
    result = {"split": split, "mode": "dual", **retrieval_metrics(emb)}
    atomic_write_json(run_dir / "eval" / "retrieval.json", result)
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


def eval_probe(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    n_train: int = 4000,
    n_test: int = 1000,
    progress: bool = True,
) -> dict:
    """Linear probes of the frozen encoders (image: largest sprite and its category, text: caption
    style, speech: keyword), each also on the same architecture at random init."""
    import torch

    from mmtlab.eval.probe import run_probes
    from mmtlab.models import build_model

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    cfg.data.test_split = split
    torch.manual_seed(cfg.seed)  # the initialisation the run itself started from
    random_model = build_model(cfg)
    modalities = getattr(model, "modalities", ("image", "text"))
    spoken = None
    if "speech" in modalities:
        from mmtlab.data.speech import load_spoken

        spoken = load_spoken(cfg.data)
    probes = run_probes(
        model, random_model, cfg, model.tokenizer, modalities, n_train=n_train, n_test=n_test, spoken=spoken,
        progress=progress,
    )  # fmt: skip
    result = {"split": split, **probes}
    atomic_write_json(run_dir / "eval" / "probe.json", result)
    return result


EVALS: dict[str, Callable[..., dict]] = {"retrieval": eval_retrieval, "mlm": eval_mlm, "probe": eval_probe}
