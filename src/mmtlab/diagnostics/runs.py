"""The cross-modal input ablation of a run directory (`mmtlab ablate RUN`): the grounded phrases of
a split (Flickr30k Entities files, or a temporary export of the dataset JSON's grounding), the
main model and a text-only baseline on the same phrases -> RUN_DIR/eval/ablation.json, .md, .png."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

from mmtlab.data.formats.flickr30k_entities import EXPORT_DIR, SENTENCES, load_entities
from mmtlab.data.loader import image_source
from mmtlab.data.sources import load_split
from mmtlab.diagnostics import ablation as ab
from mmtlab.diagnostics.ablation_report import ablation_markdown, plot_ablation
from mmtlab.eval.runs import EvalError, load_run, require_eval
from mmtlab.io import atomic_write_json, atomic_write_text


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

    if alignment not in ab.OVERLAPS:
        raise EvalError(f"--alignment {alignment!r}: choose one of {', '.join(ab.OVERLAPS)}")
    if not 0.0 <= threshold < 1.0:
        raise EvalError(f"--threshold must be in [0, 1), got {threshold}")
    if max_phrases is not None and max_phrases < 1:
        raise EvalError(f"--max-phrases must be >= 1, got {max_phrases}")
    run_dir = Path(run_dir)
    model, cfg = load_run(run_dir, data)
    require_eval(cfg, "ablation", run_dir)
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


@contextmanager
def entities_root(given: Path | None, default: Path, records):
    """The Flickr30k Entities root to read: `given`, else the dataset's export, else (a build made
    before the export existed, or a split it does not export: pretrain) an export of the records'
    grounding into a temporary directory."""

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
    from mmtlab.data.emoji_scenes.export import export_flickr30k_entities
    from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
    from mmtlab.data.pairs import image_size

    def as_dict(r) -> dict:
        width, height = image_size(r.path)
        keys = ("captions", "phrases", "boxes", "labels")
        return {"filename": Path(r.path).name, "width": width, "height": height, **{k: getattr(r, k) for k in keys}}

    with tempfile.TemporaryDirectory(prefix="mmtlab-entities-") as tmp:
        export_flickr30k_entities(Path(tmp), map(as_dict, records), SpriteAtlas.load().categories)
        yield Path(tmp)
