"""`mmtlab eval ... | caption | ablate`: evaluations and diagnostics of a trained run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mmtlab.cli import UserError, app, console, eval_app


def print_retrieval(result: dict, title: str) -> None:
    keys = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
    table = Table(title=title)
    table.add_column("")
    for k in keys:
        table.add_column(k, justify="right")
    table.add_row("model", *(f"{result[k]:.1f}" for k in keys), style="bold")
    table.add_row("chance", *(f"{result['chance'][k]:.2f}" for k in keys), style="dim")
    console.print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory")],
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root (Karpathy JSON inside)")] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="dual: embed images and captions separately, rank by cosine (contrastive head). "
            "cross: the ITM head scores every image x caption pair (cross-encoders). "
            "rerank: a dual encoder shortlists the top --k, the ITM head reranks them."
        ),
    ] = "dual",
    k: Annotated[int, typer.Option(help="rerank: shortlist size per query")] = 128,
    max_images: Annotated[int | None, typer.Option(help="evaluate on the first N images of the split")] = None,
    shortlist: Annotated[
        Path | None, typer.Option(help="rerank: a dual-encoder run to shortlist with (default: the model's own)")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="evaluate at another resolution (writes retrieval[_MODE]_<N>px.json)")
    ] = None,
):
    """Zero-shot image<->text Recall@1/5/10 -> RUN_DIR/eval/retrieval.json (dual, + retrieval_examples.png),
    retrieval_cross.json or retrieval_rerank.json."""
    from mmtlab.eval.runs import RETRIEVAL_MODES, eval_retrieval, retrieval_file

    if mode not in RETRIEVAL_MODES:
        raise UserError(f"--mode {mode!r}: choose one of {', '.join(RETRIEVAL_MODES)}")
    result = eval_retrieval(
        run_dir, split, data, mode=mode, k=k, max_images=max_images, shortlist=shortlist, image_size=image_size
    )
    what = {"dual": "dual encoder", "cross": "cross-encoder, all pairs", "rerank": f"cross-encoder reranking top-{k}"}
    print_retrieval(
        result,
        f"zero-shot retrieval, {split}, {what[mode]} ({result['n_images']} images, {result['n_texts']} captions, "
        f"{result['image_size']} px)",
    )
    if mode == "rerank":
        c = result["shortlist_ceiling"]
        console.print(
            f"shortlist recall ceiling (queries with a match in the shortlist): i2t {c['i2t']:.1f}%, "
            f"t2i {c['t2i']:.1f}%"
        )
    if mode != "dual":
        console.print(f"{result['pairs_scored']:,} pairs scored in {result['scoring_seconds']:.1f} s")
    console.print(f"wrote {run_dir / 'eval' / retrieval_file(mode, image_size)}")


@eval_app.command("mlm")
def eval_mlm(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory with an MLM head")],
    split: Annotated[str, typer.Option(help="split to evaluate")] = "test",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root")] = None,
):
    """Masked-token loss (bits/token) on captions with and without the image -> RUN_DIR/eval/mlm.json."""
    from mmtlab.eval.runs import eval_mlm

    result = eval_mlm(run_dir, split, data)
    console.print(
        f"masked-token loss on {split}: {result['bits_per_token_with_image']:.3f} bits with the image, "
        f"{result['bits_per_token_without_image']:.3f} without (gain {result['image_gain_bits']:.3f} bits)"
    )


Method = Annotated[str, typer.Option(help="decoding: greedy, beam or nucleus")]


def _check_method(method: str) -> None:
    if method not in ("greedy", "beam", "nucleus"):
        raise UserError(f"--method {method!r}: choose greedy, beam or nucleus")


@eval_app.command("caption")
def eval_caption(
    run_dir: Annotated[Path, typer.Argument(help="a trained run with a text decoder (mammut, coca, dual_captioner)")],
    split: Annotated[str, typer.Option(help="split to caption")] = "test",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root")] = None,
    method: Method = "beam",
    beams: Annotated[int, typer.Option(help="beam size (method beam)")] = 3,
    max_images: Annotated[int | None, typer.Option(help="caption only the first N images")] = None,
):
    """Caption every image of the split; BLEU-4 and CIDEr (x100) against the reference captions
    -> RUN_DIR/eval/caption.json (with examples)."""
    from mmtlab.eval.runs import eval_caption

    _check_method(method)

    result = eval_caption(run_dir, split, data, method=method, num_beams=beams, max_images=max_images)
    console.print(
        f"captioning on {split} ({result['n_images']} images, {method}): BLEU-4 {result['bleu4']:.1f}, "
        f"CIDEr {result['cider']:.1f}, mean length {result['mean_length_words']:.1f} words"
    )
    for ex in result["examples"][:3]:
        console.print(f"  [bold]{ex['caption']}[/]  (reference: {ex['references'][0]})", highlight=False)
    console.print(f"wrote {run_dir / 'eval' / 'caption.json'}")


@eval_app.command("vqa")
def eval_vqa(
    run_dir: Annotated[Path, typer.Argument(help="a trained run with a text decoder")],
    split: Annotated[str, typer.Option(help="split whose images are asked about")] = "test",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root")] = None,
    finetune_steps: Annotated[
        int | None, typer.Option(help="first fine-tune on VQA of the training split for N steps (into RUN_DIR/vqa)")
    ] = None,
    finetune_lr: Annotated[float | None, typer.Option(help="fine-tuning learning rate (default: the run's)")] = None,
    max_questions: Annotated[int | None, typer.Option(help="ask only the first N questions")] = None,
):
    """Generative VQA on emoji-scenes (count, presence, relation, identity questions): exact-match
    accuracy overall and by type -> RUN_DIR/eval/vqa.json."""
    from mmtlab.evaluate import eval_vqa

    r = eval_vqa(run_dir, split, data, finetune_steps, finetune_lr, max_questions)
    table = Table(title=f"VQA on {split} ({r['n_questions']} questions, exact match %)")
    for col in ("", "all", *r["n_by_type"]):
        table.add_column(col, justify="right")
    table.add_row("model", f"{r['accuracy']:.1f}", *(f"{r[f'{t}_accuracy']:.1f}" for t in r["n_by_type"]), style="bold")
    table.add_row("majority answer", "", *(f"{r['majority_answer'][t]:.1f}" for t in r["n_by_type"]), style="dim")
    console.print(table)
    console.print(f"wrote {run_dir / 'eval' / 'vqa.json'}")


@eval_app.command("fewshot")
def eval_fewshot(
    run_dir: Annotated[Path, typer.Argument(help="a trained Flamingo run (model.arch flamingo)")],
    split: Annotated[str, typer.Option(help="split the queries come from")] = "test",
    support: Annotated[str, typer.Option(help="split the demonstrations are drawn from")] = "val",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root")] = None,
    shots: Annotated[str, typer.Option(help="comma-separated numbers of demonstrations")] = "0,4,8,16",
    tasks: Annotated[str, typer.Option(help="comma-separated: caption, vqa, classify")] = "caption,vqa,classify",
    max_items: Annotated[int, typer.Option(help="queries per task (the first N of the split)")] = 200,
    beams: Annotated[int, typer.Option(help="beam size")] = 3,
    seed: Annotated[int, typer.Option(help="seed of the demonstration draws")] = 0,
    blind: Annotated[
        bool, typer.Option(help="control: close every tanh gate (the frozen LM, no vision) -> fewshot_blind.json")
    ] = False,
):
    """In-context few-shot captioning (CIDEr), VQA (exact match) and classification (class names
    ranked by likelihood) with k demonstrations from the support split; 0 shots = two text-only
    demonstrations, as in the Flamingo paper -> RUN_DIR/eval/fewshot.json and fewshot.png (score
    vs shots). Also: the held-out documents' loss with their own, shuffled or no images."""
    from mmtlab.eval.fewshot import TASKS
    from mmtlab.eval.runs import eval_fewshot as run_fewshot

    try:
        ks = tuple(int(k) for k in shots.split(","))
    except ValueError:
        raise UserError(f"--shots {shots!r}: expected comma-separated integers, e.g. 0,4,8,16") from None
    names = tuple(t.strip() for t in tasks.split(","))
    bad = [t for t in names if t not in TASKS]
    if bad or any(k < 0 for k in ks):
        raise UserError(f"--tasks {bad} unknown (choose {', '.join(TASKS)})" if bad else "--shots must be >= 0")
    r = run_fewshot(run_dir, split, support, data, ks, names, max_items, beams, seed, blind=blind)
    control = ", gates closed: no vision" if blind else ""
    table = Table(title=f"few-shot in context on {split} (demonstrations from {support}, beam {beams}{control})")
    table.add_column("task")
    table.add_column("metric")
    for k in ks:
        table.add_column(f"{k} shots", justify="right")
    for t in names:
        table.add_row(f"{t} (n={r[t]['n']})", r[t]["metric"], *(f"{r[t]['scores'][k]:.1f}" for k in ks))
    console.print(table)
    if "image_worth" in r:
        worth = Table(title=f"held-out {split} documents: next-token loss (nats / token) by the images they see")
        for col in ("task", "own images", "shuffled images", "no images", "tokens"):
            worth.add_column(col, justify="right")
        for t, w in r["image_worth"].items():
            worth.add_row(t, *(f"{w[c]:.4f}" for c in ("own", "shuffled", "none")), str(w["tokens"]))
        console.print(worth)
    name = "fewshot_blind" if blind else "fewshot"
    console.print(f"wrote {run_dir / 'eval' / name}.json and {name}.png")


@app.command()
def caption(
    run_dir: Annotated[Path, typer.Argument(help="a trained run with a text decoder (mammut, coca, dual_captioner)")],
    image: Annotated[list[Path], typer.Option(help="image file(s) to caption")],
    method: Method = "beam",
    beams: Annotated[int, typer.Option(help="beam size (method beam)")] = 3,
    top_p: Annotated[float, typer.Option(help="nucleus: smallest token set with this probability mass")] = 0.9,
    temperature: Annotated[float, typer.Option(help="nucleus: softmax temperature")] = 1.0,
    seed: Annotated[int, typer.Option(help="nucleus: sampling seed")] = 0,
    prompt: Annotated[
        str | None, typer.Option(help='text to continue, e.g. "question: how many things are in the picture? answer:"')
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="at most this many new tokens")] = None,
):
    """Caption an image (or answer a question about it with --prompt)."""
    import torch

    _check_method(method)

    import mmtlab
    from mmtlab.data.pairs import BAD_IMAGE_ERRORS, load_image, to_float
    from mmtlab.eval.captioning import decode_continuations
    from mmtlab.eval.runs import require_eval
    from mmtlab.eval.vqa import prompt_ids

    model = mmtlab.load(run_dir)
    require_eval(model.run_config, "caption", run_dir)  # a family with a text decoder
    try:
        images = to_float(torch.stack([load_image(p, model.cfg.image.size) for p in image]))
    except BAD_IMAGE_ERRORS as e:
        raise UserError(f"--image: cannot read an image ({e})") from None
    ids = None
    if prompt is not None:
        ids = torch.tensor([prompt_ids(model.tokenizer, prompt)] * len(image), dtype=torch.long)
    out = model.generate(
        images,
        ids,
        method=method,
        num_beams=beams,
        top_p=top_p,
        temperature=temperature,
        generator=torch.Generator().manual_seed(seed),
        max_new_tokens=max_tokens,
    )
    start = 1 if ids is None else ids.shape[1]
    for path, text in zip(image, decode_continuations(model.tokenizer, out, start)):
        console.print(f"{path}: [bold]{text}[/]", highlight=False)


@eval_app.command("gates")
def eval_gates(run_dir: Annotated[Path, typer.Argument(help="a trained Flamingo run (model.arch flamingo)")]):
    """Flamingo's tanh gates, layer by layer: how far each gated cross-attention and feed-forward
    block lets the images into the frozen LM (0: not at all) -> RUN_DIR/eval/gates.json."""
    from mmtlab.eval.runs import eval_gates as run_gates

    r = run_gates(run_dir)
    init = r["gate_init"]
    table = Table(title=f"tanh(gate) by gated block (initialised at {init}: tanh {math.tanh(init):.2f})")
    table.add_column("gate")
    for i in range(len(r["tanh"]["cross_gate"])):
        table.add_column(f"block {i}", justify="right")
    table.add_column("mean |tanh|", justify="right")
    for kind, values in r["tanh"].items():
        mean = r[f"{kind.removesuffix('_gate')}_mean_abs"]
        table.add_row(kind, *(f"{v:+.3f}" for v in values), f"{mean:.3f}")
    console.print(table)
    console.print(f"wrote {run_dir / 'eval' / 'gates.json'}")


@eval_app.command("probe")
def eval_probe(
    run_dir: Annotated[Path, typer.Argument(help="a trained run directory (data2vec or a dual encoder)")],
    split: Annotated[str, typer.Option(help="split the image probe is tested on")] = "test",
    data: Annotated[Path | None, typer.Option(help="probe on another dataset root")] = None,
    n_train: Annotated[int, typer.Option(help="probe-training items (images / captions)")] = 4000,
    n_test: Annotated[int, typer.Option(help="probe-test items (images / captions)")] = 1000,
):
    """Linear probes of the frozen encoders vs the same model at random init -> RUN_DIR/eval/probe.json.

    image: largest sprite (identity) and its category, sprite count; text: caption style; speech:
    spoken keyword (leave one voice out)."""
    from mmtlab.eval.runs import eval_probe

    result = eval_probe(run_dir, split, data, n_train, n_test)
    table = Table(title=f"linear probes, accuracy % (+- 95% CI), {run_dir}")
    for col in ("task", "trained", "random init", "majority class", "train / test"):
        table.add_column(col, justify="right")
    for task, r in result.items():
        if isinstance(r, dict) and "skipped" in r:
            console.print(f"{task}: skipped ({r['skipped']})")
        elif isinstance(r, dict):
            cells = [f"{r[k]['accuracy']:.1f} +- {r[k]['ci95']:.1f}" for k in ("trained", "random")]
            table.add_row(task, *cells, f"{r['majority']:.1f}", f"{r['n_train']} / {r['n_test']}")
    console.print(table)
    console.print(f"wrote {run_dir / 'eval' / 'probe.json'}")


@eval_app.command("zeroshot")
def eval_zeroshot(
    run_dir: Annotated[Path, typer.Argument(help="a trained run with a contrastive head (dual, ITC, MaMMUT, CoCa)")],
    data: Annotated[Path | None, typer.Option(help="read the vocabularies from another emoji-scenes build")] = None,
    per_class: Annotated[
        int | None, typer.Option(help="single-sprite test images per sprite (default: 4, or enough for 1,000)")
    ] = None,
    groups: Annotated[int, typer.Option(help="controlled retrieval: groups of scenes")] = 125,
    group_size: Annotated[int, typer.Option(help="controlled retrieval: scenes per group (chance = 1/N)")] = 8,
    seed: Annotated[int, typer.Option(help="seed of the generated test images")] = 0,
):
    """Does the model know the objects? -> RUN_DIR/eval/zeroshot.json.

    Zero-shot classification (CLIP-style): single sprites on random backgrounds, classified by the
    nearest sprite name, each name the average of several prompt templates ("a picture of a cat.",
    ...); top-1/top-5 for sprites seen in pretraining and held-out sprites, next to chance.

    Controlled retrieval: groups of scenes with the same background and sprite count; each caption
    ranks its group's images, so only the objects can tell them apart (chance = 1/group size).
    The test images are generated on the fly from --seed and never appear in training."""
    from mmtlab.eval.runs import eval_zeroshot as run_zeroshot

    r = run_zeroshot(run_dir, data, per_class, groups, group_size, seed)
    c = r["classification"]
    table = Table(title=f"zero-shot classification of single sprites, {c['n_classes']} class names, % ({run_dir})")
    for col in ("sprites", "images", "candidates", "top-1", "chance", "top-5", "chance "):
        table.add_column(col, justify="right")
    for name, label in (("seen", "seen"), ("heldout", "held-out")):
        for suffix, among in (("", "all names"), ("_within", f"{label} names")):
            m = c.get(name + suffix)
            if m:
                table.add_row(
                    label, str(m["n_images"]), f"{among} ({m['n_classes']})", f"{m['top1']:.1f}",
                    f"{m['chance_top1']:.2f}", f"{m['top5']:.1f}", f"{m['chance_top5']:.2f}",
                )  # fmt: skip
    console.print(table)
    k = r["controlled"]
    table = Table(title=f"controlled retrieval: {k['groups']} groups x {k['group_size']}, same background and count")
    for col in ("sprites per scene", "images", "t2i R@1", "i2t R@1", "chance"):
        table.add_column(col, justify="right")
    for n, m in k["by_count"].items():
        table.add_row(n, str(m["n_images"]), f"{m['t2i_r1']:.1f}", f"{m['i2t_r1']:.1f}", f"{m['chance_r1']:.1f}")
    table.add_row("all", str(k["groups"] * k["group_size"]), f"{k['t2i_r1']:.1f}", f"{k['i2t_r1']:.1f}",
                  f"{k['chance_r1']:.1f}")  # fmt: skip
    console.print(table)
    console.print(
        f"the same captions against all {k['groups'] * k['group_size']} images: t2i R@1 "
        f"{k['uncontrolled_t2i_r1']:.1f} (chance {k['uncontrolled_chance_r1']:.2f})"
    )
    console.print(f"wrote {run_dir / 'eval' / 'zeroshot.json'}")


@app.command()
def ablate(
    run_dir: Annotated[Path, typer.Argument(help="a trained run with an MLM and/or a masked-region (mrm_*) head")],
    split: Annotated[str, typer.Option(help="split whose grounded phrases are used")] = "test",
    data: Annotated[Path | None, typer.Option(help="evaluate on another dataset root")] = None,
    entities: Annotated[
        Path | None,
        typer.Option(help="Flickr30k Entities root (Sentences/, Annotations/); default: DATA/flickr30k_entities"),
    ] = None,
    max_phrases: Annotated[int | None, typer.Option(help="a seeded sample of N phrases (default: all)")] = None,
    alignment: Annotated[
        str, typer.Option(help="region-box overlap: iot (intersection over the annotated box) or iou")
    ] = "iot",
    threshold: Annotated[float, typer.Option(help="a region is aligned with a phrase above this overlap")] = 0.5,
    baseline: Annotated[
        Path | None, typer.Option(help="a text-only run (data.text_only) evaluated on the same phrases")
    ] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples of the phrases for the 95% CIs")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the phrase sample and the bootstrap")] = 0,
):
    """Cross-modal input ablation (Frank et al. 2021): does the model use the other modality?

    Vision-for-language: a grounded phrase's tokens are masked; MLM loss on them (bits/token) with
    the image intact, with the regions aligned to the phrase's box replaced by the average region
    feature (object), and with all regions replaced (all). Patch models: patches over the box.

    Language-for-vision: the regions aligned to the phrase are masked; masked-region loss at the
    best-aligned one (bits) with the text intact, the phrase masked, all tokens masked; against
    the detector's class distribution (silver, KL) and the annotated class (gold, cross-entropy).

    Higher loss after ablating = the model used what was ablated. Writes RUN_DIR/eval/ablation.json,
    ablation.md (table) and ablation.png (bars with 95% bootstrap CIs).

    Example: mmtlab train configs/runs/hendricks-text-only.yaml --out runs/text-only, then
    mmtlab ablate RUN_DIR --baseline runs/text-only --max-phrases 1000"""
    from mmtlab.diagnostics.ablation_report import ablation_rows
    from mmtlab.diagnostics.runs import eval_ablation

    if bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {bootstrap}")
    r = eval_ablation(run_dir, split, data, entities, max_phrases, alignment, threshold, baseline, bootstrap, seed)
    table = Table(
        title=f"cross-modal ablation, {split}: {r['n_phrases']} phrases, {alignment} > {threshold}, "
        "bits [95% CI] (lower is better)"
    )
    for col in ("direction", "n", "none", "object / phrase", "all"):
        table.add_column(col, justify="left" if col == "direction" else "right")
    for direction, _unit, n, cells in ablation_rows(r):
        table.add_row(direction, str(n), *cells)
    console.print(table)
    console.print(f"{r['n_phrases']} phrases in {r['seconds']:.1f} s ({r['phrases_per_second']} phrases/s)")
    console.print(f"wrote {run_dir / 'eval' / 'ablation.json'}, ablation.md, ablation.png")
