"""Evaluations of a trained run directory, by name: each writes RUN_DIR/eval/<name>.json.

The CLI (`mmtlab eval <name>`) and the study runner both call these; a new evaluation is a
function here plus an entry in EVALS.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from mmtlab.io import atomic_write_json, atomic_write_text


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
    from mmtlab.data.loader import image_source
    from mmtlab.data.sources import load_split
    from mmtlab.eval.retrieval import embed_records, retrieval_metrics

    if mode not in RETRIEVAL_MODES:
        raise EvalError(f"retrieval mode {mode!r}: choose one of {', '.join(RETRIEVAL_MODES)}")
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
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
    if image_size is not None:
        if cfg.model.image.input == "regions":
            raise EvalError("--image-size applies to pixel inputs; this model reads detector regions")
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
            from mmtlab.eval.examples import plot_text_to_image

            plot_text_to_image(emb, records, run_dir / "eval" / "retrieval_examples.png")
        return result

    from mmtlab.eval.cross import cross_metrics, encode_unpaired_records

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
    from mmtlab.data.sources import load_split
    from mmtlab.eval.mlm import evaluate_mlm

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    if model.mlm is None:
        raise EvalError(f"{run_dir}: the model has no MLM head (outputs: {cfg.model.outputs})")
    from mmtlab.data.loader import image_source

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


def _require_decoder(model, run_dir: Path, what: str):
    if model.cfg.arch == "flamingo":
        raise EvalError(f"{run_dir}: a Flamingo run is evaluated in context: mmtlab eval fewshot {run_dir}")
    if not hasattr(model, "generate") or model.cfg.arch == "lm":
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
    from mmtlab.data.sources import load_split
    from mmtlab.eval.fewshot import evaluate_fewshot, image_worth, plot_fewshot

    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    if cfg.model.arch != "flamingo":
        raise EvalError(
            f"{run_dir}: few-shot evaluation needs a Flamingo run (model.arch flamingo), not {cfg.model.arch!r}"
        )
    queries = load_split(cfg.data, split)
    worth = None if blind else image_worth(model, model.tokenizer, queries, seed=seed, progress=progress)
    if blind:
        model.close_gates()
    scores = evaluate_fewshot(
        model, model.tokenizer, queries, load_split(cfg.data, support),
        tasks=tasks, shots=shots, max_items=max_items, num_beams=num_beams, seed=seed, progress=progress,
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
    if cfg.model.arch not in ("encoder", "data2vec"):  # the probes read encoder states, not decoders'
        raise EvalError(f"{run_dir}: probes need an encoder or data2vec run, not {cfg.model.arch!r}")
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


def eval_ablation(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    entities: Path | None = None,
    max_phrases: int | None = None,
    alignment: str = "iot",
    threshold: float = 0.5,
    baseline: Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Cross-modal input ablation (diagnostics/ablation.py) on the grounded phrases of `split`:
    vision-for-language (MLM head) and language-for-vision (MRM head), with a text-only `baseline`
    run evaluated on the same phrases. Writes eval/ablation.json, ablation.md and ablation.png."""
    from mmtlab.data.formats.flickr30k_entities import EXPORT_DIR, load_entities
    from mmtlab.data.loader import image_source
    from mmtlab.data.sources import load_split
    from mmtlab.diagnostics import ablation as ab
    from mmtlab.diagnostics.ablation_report import ablation_markdown, plot_ablation

    if alignment not in ab.OVERLAPS:
        raise EvalError(f"--alignment {alignment!r}: choose one of {', '.join(ab.OVERLAPS)}")
    if not 0.0 <= threshold < 1.0:
        raise EvalError(f"--threshold must be in [0, 1), got {threshold}")
    if max_phrases is not None and max_phrases < 1:
        raise EvalError(f"--max-phrases must be >= 1, got {max_phrases}")
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    if model.mlm is None and model.mrm is None:
        raise EvalError(f"{run_dir}: the ablation needs an MLM or an MRM head (outputs: {cfg.model.outputs})")
    if baseline is not None:  # checked before the main model's evaluation, not after it
        base_model, base_cfg = load_run(Path(baseline), data)
        if base_model.mlm is None:
            raise EvalError(f"--baseline {baseline}: that model has no MLM head")
    records = load_split(cfg.data, split)
    export = Path(cfg.data.root) / EXPORT_DIR
    with entities_root(entities, export, records) as root:
        found = load_entities(root, [Path(r.path).stem for r in records])
    where = str(entities or root) if entities or root == export else "a temporary export of the JSON's phrases"
    phrases, counts = ab.grounded_phrases(records, found)
    counts["images_with_unreadable_annotations"] = len(found.skipped)
    phrases = ab.subsample(phrases, max_phrases, seed)
    if not phrases:
        raise EvalError(f"no grounded phrases (with a box) for the {split} split in {where}")
    text_only = cfg.data.text_only
    source = None if text_only else image_source(cfg, records, progress)
    bs = cfg.eval.batch_size
    inputs = ab.VisualInputs(model, source, records, alignment, threshold, bs)
    result = {
        "run": str(run_dir),
        "split": split,
        "entities": where,
        "image_input": "none (text-only model)" if text_only else cfg.model.image.input,
        "alignment": alignment,
        "threshold": threshold,
        "bootstrap_resamples": bootstrap,
        **counts,
        **ab.run_ablation(
            model, model.tokenizer, phrases, inputs, batch_size=bs, n_bootstrap=bootstrap, seed=seed,
            progress=progress,
        ),
    }  # fmt: skip
    if baseline is not None:
        # The phrases the main model was evaluated on: those whose image decodes.
        usable = [p for p in phrases if inputs.usable(p.record)]
        base = ab.run_ablation(
            base_model, base_model.tokenizer, usable, ab.VisualInputs(base_model, None, records, alignment, threshold),
            batch_size=bs, n_bootstrap=bootstrap, seed=seed, progress=progress,
        )["vision_for_language"]  # fmt: skip
        result["text_only_baseline"] = {
            "run": str(baseline),
            **base["none"],
            "n_phrases": base["n_phrases"],  # its own tokenizer decides which phrases are cut off
            "trained_text_only": base_cfg.data.text_only,  # else: a multimodal model run without its image
            # bits per token compare across models only when both cut the phrases into the same tokens
            "same_tokenizer": base_model.tokenizer.tok.get_vocab() == model.tokenizer.tok.get_vocab(),
        }
    result.update(ab.summary(result))  # flat numbers for study tables: ablation.v4l_all, ...
    out = run_dir / "eval"
    atomic_write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", ablation_markdown(result))
    plot_ablation(result, out / "ablation.png")
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
    if getattr(model, "contrastive", None) is None or cfg.model.image.input != "patches":
        raise EvalError(
            f"{run_dir}: zero-shot evaluation needs a contrastive head on pixels (model.arch {cfg.model.arch!r}); "
            "a data2vec run is evaluated after contrastive training initialised from it (train.init_from)"
        )
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


@contextmanager
def entities_root(given: Path | None, default: Path, records):
    """The Flickr30k Entities root to read: `given`, else the dataset's export, else (a build made
    before the export existed, or a split it does not export: pretrain) an export of the records'
    grounding into a temporary directory."""
    from mmtlab.data.formats.flickr30k_entities import SENTENCES

    if given is not None:
        if not Path(given).is_dir():
            raise EvalError(f"--entities: no directory at {given}")
        yield Path(given)
        return
    if any((default / SENTENCES / f"{Path(r.path).stem}.txt").exists() for r in records):
        yield default
        return
    if not any(r.phrases for r in records):
        raise EvalError(f"{default} is missing and the dataset's JSON has no phrases; pass --entities DIR")
    from mmtlab.data.emoji_scenes.build import export_flickr30k_entities
    from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
    from mmtlab.data.pairs import image_size

    def as_dict(r) -> dict:
        width, height = image_size(r.path)
        keys = ("captions", "phrases", "boxes", "labels")
        return {"filename": Path(r.path).name, "width": width, "height": height, **{k: getattr(r, k) for k in keys}}

    with tempfile.TemporaryDirectory(prefix="mmtlab-entities-") as tmp:
        export_flickr30k_entities(Path(tmp), map(as_dict, records), SpriteAtlas.load().categories)
        yield Path(tmp)


EVALS: dict[str, Callable[..., dict]] = {
    "retrieval": eval_retrieval,
    "mlm": eval_mlm,
    "caption": eval_caption,
    "vqa": eval_vqa,
    "probe": eval_probe,
    "ablation": eval_ablation,
    "zeroshot": eval_zeroshot,
}
