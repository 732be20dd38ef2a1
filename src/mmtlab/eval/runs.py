"""Evaluations of a trained run directory: each loads the run, checks that the evaluation applies
to its family (mmtlab/families.py: `evals`), runs eval/<task>.py and writes RUN_DIR/eval/<name>.json.

By name, for the CLI and studies: mmtlab/evaluate.py (which adds the ablation from diagnostics/
and VQA after a fine-tune).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mmtlab.data.emoji_scenes.vqa import make_questions
from mmtlab.data.loader import image_source
from mmtlab.data.sources import load_split
from mmtlab.eval.captioning import evaluate_captioning
from mmtlab.eval.cross import cross_metrics, encode_unpaired_records
from mmtlab.eval.examples import plot_text_to_image
from mmtlab.eval.fewshot import evaluate_fewshot, image_worth, plot_fewshot
from mmtlab.eval.mlm import evaluate_mlm
from mmtlab.eval.probe import run_probes
from mmtlab.eval.retrieval import embed_records, retrieval_metrics
from mmtlab.eval.vqa import evaluate_vqa
from mmtlab.families import FAMILIES, family_of
from mmtlab.io import atomic_write_json
from mmtlab.models import build_model
from mmtlab.rundir import latest_step, training_pid


class EvalError(RuntimeError):
    """The run cannot be evaluated this way (e.g. no contrastive head for dual retrieval)."""


def load_run(run_dir: Path, data: Path | None = None):
    """The run's model (with .tokenizer and .run_config), optionally pointed at another dataset."""
    import mmtlab

    model = mmtlab.load(run_dir)
    cfg = model.run_config
    if (pid := training_pid(run_dir)) is not None:
        sys.stderr.write(
            f"warning: {run_dir} is still training (PID {pid}): evaluating its latest checkpoint, "
            f"step {latest_step(run_dir)} of {cfg.train.steps}\n"
        )
    if data is not None:
        cfg.data.root, cfg.data.annotations, cfg.data.images = str(data), None, None
    return model, cfg


RETRIEVAL_MODES = ("dual", "cross", "rerank")


def retrieval_file(mode: str = "dual", image_size: int | None = None) -> str:
    """The name under RUN_DIR/eval of a retrieval result: retrieval[_MODE][_<N>px].json."""
    return (
        "retrieval"
        + ("" if mode == "dual" else f"_{mode}")
        + ("" if image_size is None else f"_{image_size}px")
        + ".json"
    )


def eval_retrieval(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    examples: bool = True,
    progress: bool = True,
    mode: str = "dual",
    k: int = 128,
    max_images: int | None = None,
    shortlist: Path | None = None,
    image_size: int | None = None,
) -> dict:
    """Zero-shot retrieval on `split` (its first `max_images` images if given).

    mode "dual": encode images and captions separately, rank by cosine (needs a contrastive head);
    writes eval/retrieval.json and eval/retrieval_examples.png.
    mode "cross": the ITM head scores every image x caption pair (needs an ITM head), reusing the
    pair-independent layers; writes eval/retrieval_cross.json.
    mode "rerank": a dual encoder shortlists each query's top `k`, the ITM head reranks them; the
    dual encoder is the model's own contrastive head, or the run `shortlist`; writes
    eval/retrieval_rerank.json with the shortlist's recall ceiling.
    `image_size`: evaluate at another resolution (the positional grid is resampled; see image.cpe);
    the file name gets a `_<size>px` suffix.
    """

    if mode not in RETRIEVAL_MODES:
        raise EvalError(f"retrieval mode {mode!r}: choose one of {', '.join(RETRIEVAL_MODES)}")
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "retrieval", run_dir)
    if mode == "dual" and model.contrastive is None:
        raise EvalError(
            f"{run_dir}: the model has no contrastive head, so dual-encoder retrieval does not apply; "
            + ("use --mode cross" if model.itm is not None else "evaluate it with `mmtlab eval mlm`")
        )
    if mode in ("cross", "rerank") and model.itm is None:
        raise EvalError(f"{run_dir}: --mode {mode} needs an ITM head (train with the itm objective)")
    if mode == "rerank" and shortlist is None and model.contrastive is None:
        raise EvalError(f"{run_dir}: rerank needs a shortlist; the model has no contrastive head: pass --shortlist RUN")
    if k < 1:
        raise EvalError(f"--k must be >= 1, got {k}")
    at_least_one(max_images=max_images)
    if image_size is not None:
        if cfg.model.image.input == "regions":
            raise EvalError("--image-size applies to pixel inputs; this model reads detector regions")
        patch = cfg.model.image.patch
        if image_size < patch or image_size % patch or image_size > 8192:
            raise EvalError(f"--image-size must be a multiple of the {patch}-px patch, at most 8192; got {image_size}")
        model.cfg.image.size = cfg.model.image.size = image_size
    records = load_split(cfg.data, split)
    source = image_source(cfg, records, progress)
    if max_images is not None:
        keep = range(min(max_images, len(records)))
        records, source = [records[i] for i in keep], source.subset(keep)
    bs = cfg.eval.batch_size
    info = {"split": split, "mode": mode, "image_size": model.cfg.image.size, "model_params": model.num_params()}
    if mode == "dual":
        emb = embed_records(model, model.tokenizer, records, batch_size=bs, progress=progress, source=source)
        result = {**info, **retrieval_metrics(emb)}
        atomic_write_json(run_dir / "eval" / retrieval_file("dual", image_size), result)
        if examples:
            plot_text_to_image(emb, records, run_dir / "eval" / "retrieval_examples.png")
        return result

    un = encode_unpaired_records(model, model.tokenizer, records, source=source, batch_size=bs, progress=progress)
    short = None
    if mode == "rerank":
        short_model, short_cfg = (model, cfg) if shortlist is None else load_run(Path(shortlist), data)
        if short_model.contrastive is None:
            raise EvalError(f"--shortlist {shortlist}: that model has no contrastive head")
        short_source = source if shortlist is None else image_source(short_cfg, records, progress)
        emb = embed_records(
            short_model, short_model.tokenizer, records, batch_size=bs, progress=progress, source=short_source
        )
        if emb.record_index != un.record_index or emb.texts.shape[0] != un.n_texts:
            raise EvalError("the shortlist model and the cross-encoder disagree on which images/captions exist")
        short = emb.images @ emb.texts.T
        info["shortlist_from"] = str(shortlist) if shortlist is not None else "own contrastive head"
    result = {**info, **cross_metrics(model, un, mode=mode, k=k, shortlist_scores=short, progress=progress)}
    atomic_write_json(run_dir / "eval" / retrieval_file(mode, image_size), result)
    return result


def eval_mlm(run_dir: Path, split: str = "test", data: Path | None = None, progress: bool = True) -> dict:
    """Masked-token loss in bits with and without the image."""

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "mlm", run_dir)
    if model.mlm is None:
        raise EvalError(f"{run_dir}: the model has no MLM head (outputs: {cfg.model.outputs})")

    records = load_split(cfg.data, split)
    source = image_source(cfg, records, progress)
    result = {
        "split": split,
        **evaluate_mlm(
            model, model.tokenizer, records, batch_size=cfg.eval.batch_size, progress=progress, source=source
        ),
    }
    atomic_write_json(run_dir / "eval" / "mlm.json", result)
    return result


def at_least_one(**counts: int | None) -> None:
    """Counts the user gives (--max-images, --max-questions, ...) are None or >= 1."""
    for name, n in counts.items():
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise EvalError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {n!r}")


def require_eval(cfg, name: str, run_dir: Path) -> None:
    """`mmtlab eval NAME` applies to the run's family (its registry entry's `evals`), or an EvalError
    that says which families it does apply to and how this one is evaluated."""
    fam = family_of(cfg)
    if name in fam.evals:
        return
    arch = cfg.model.arch
    owners = [a for a, f in FAMILIES.items() if name in f.evals]
    own = f"; model.arch {arch} is evaluated with: {', '.join(fam.evals)}" if fam.evals else ""
    raise EvalError(f"{run_dir}: eval {name} needs a model.arch {' or '.join(owners)} run, not {arch!r}{own}")


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
    at_least_one(max_images=max_images, num_beams=num_beams)

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "caption", run_dir)
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
            source=image_source(cfg, records, progress) if cfg.model.video else None,
        ),
    }
    atomic_write_json(run_dir / "eval" / "caption.json", result)
    return result


def eval_gates(run_dir: Path, progress: bool = True) -> dict:
    """Flamingo's tanh gates after training -> RUN_DIR/eval/gates.json: each gated block's
    cross-attention and feed-forward gate in layer order, and their mean |tanh| (0 = images unread)."""
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir)
    require_eval(cfg, "gates", run_dir)
    values = model.gate_values()
    result = {"gate_init": cfg.model.flamingo.gate_init, "tanh": values}
    for kind, v in values.items():
        result[f"{kind.removesuffix('_gate')}_mean_abs"] = sum(map(abs, v)) / max(len(v), 1)
    atomic_write_json(run_dir / "eval" / "gates.json", result)
    return result


def eval_fewshot(
    run_dir: Path,
    split: str = "test",
    support: str = "val",
    data: Path | None = None,
    shots: tuple[int, ...] = (0, 4, 8, 16),
    tasks: tuple[str, ...] = ("caption", "vqa", "classify"),
    max_items: int | None = 200,
    num_beams: int = 3,
    seed: int = 0,
    progress: bool = True,
    blind: bool = False,
) -> dict:
    """Few-shot in-context captioning, VQA and classification (eval/fewshot.py) ->
    eval/fewshot.json and eval/fewshot.png (score vs shots), with the held-out document loss with
    own / shuffled / no images (`image_worth`). `blind`: the control without vision,
    every tanh gate closed (the frozen LM with the trained <image> embedding) -> fewshot_blind.*"""
    at_least_one(max_items=max_items, num_beams=num_beams)

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "fewshot", run_dir)
    queries = load_split(cfg.data, split)
    stride = cfg.data.frame_stride  # clips are read as training read them
    worth = None if blind else image_worth(model, model.tokenizer, queries, seed=seed, frame_stride=stride,
                                           progress=progress)  # fmt: skip
    if blind:
        model.close_gates()
    scores = evaluate_fewshot(
        model, model.tokenizer, queries, load_split(cfg.data, support), tasks=tasks, shots=shots,
        max_items=max_items, num_beams=num_beams, seed=seed, progress=progress, frame_stride=stride,
    )  # fmt: skip
    result = {"split": split, "support": support, "num_beams": num_beams, "seed": seed, "blind": blind, **scores}
    if worth is not None:
        result["image_worth"] = worth
    name = "fewshot_blind" if blind else "fewshot"
    atomic_write_json(run_dir / "eval" / f"{name}.json", result)
    what = "gates closed (no vision)" if blind else run_dir.name
    plot_fewshot(scores, run_dir / "eval" / f"{name}.png", f"few-shot in context, {what}")
    return result


def eval_vqa(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    max_questions: int | None = None,
    progress: bool = True,
    model_dir: Path | None = None,
    **info,
) -> dict:
    """Generative VQA accuracy by question type -> RUN_DIR/eval/vqa.json. `model_dir`: evaluate
    another run's model in its place (the VQA fine-tune of RUN_DIR, train/finetune.py); `info` is
    recorded in the result."""
    at_least_one(max_questions=max_questions)

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "vqa", run_dir)
    if model_dir is not None:
        model, cfg = load_run(Path(model_dir), data)
    records = load_split(cfg.data, split)
    questions = make_questions(records)[:max_questions]
    result = {
        "split": split,
        "model": str(model_dir or run_dir),
        **info,
        **evaluate_vqa(
            model,
            model.tokenizer,
            records,
            questions,
            batch_size=cfg.eval.batch_size,
            progress=progress,
            source=image_source(cfg, records, progress) if cfg.model.video else None,
        ),  # fmt: skip
    }
    atomic_write_json(run_dir / "eval" / "vqa.json", result)
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
    at_least_one(n_train=n_train, n_test=n_test)

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "probe", run_dir)  # the probes read encoder states, not decoders'
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


def eval_zeroshot(
    run_dir: Path,
    data: Path | None = None,
    per_class: int | None = None,
    groups: int = 125,
    group_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Object knowledge (eval/zeroshot.py): zero-shot classification of single-sprite images, seen
    and held-out sprites, and background- and count-controlled retrieval -> eval/zeroshot.json."""
    from mmtlab.eval.zeroshot import evaluate_zeroshot, run_vocabularies

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "zeroshot", run_dir)
    at_least_one(per_class=per_class, groups=groups)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise EvalError(f"--group-size must be a whole number >= 2 (a group needs a distractor), got {group_size!r}")
    if model.contrastive is None or cfg.model.image.input != "patches":
        raise EvalError(f"{run_dir}: zero-shot evaluation needs a contrastive head on pixel inputs")
    seen, heldout, source = run_vocabularies(cfg.data.root)
    result = {
        "vocabulary_from": source,
        **evaluate_zeroshot(
            model, model.tokenizer, seen, heldout, seed=seed, per_class=per_class, groups=groups,
            group_size=group_size, image_size=cfg.model.image.size, batch_size=cfg.eval.batch_size, progress=progress,
        ),
    }  # fmt: skip
    atomic_write_json(run_dir / "eval" / "zeroshot.json", result)
    return result
