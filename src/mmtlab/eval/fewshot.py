"""Few-shot in-context evaluation of Flamingo (Alayrac et al. 2022, Sec. 3 / Appendix B.1.5):
captioning (CIDEr) and VQA (exact-match accuracy), open-ended with beam search, and
classification (the largest sprite's name), close-ended: every class name of the dataset is scored
by its log-likelihood after the prompt (with the end-of-chunk token) and the most likely one is the
answer, as OpenFlamingo's classification evaluation does. k demonstrations precede the query.

    k > 0   [CLS] <image> demo 1 [SEP] ... <image> demo k [SEP] <image> query prompt
    k = 0   two text-only demonstrations (no images), then the query: the paper's zero-shot prompt

Demonstrations come from a support split, drawn without replacement with a fixed seed. Prompts
must be unpadded and equally long to decode together (models/generate.py), so queries are grouped
by prompt length and each group of up to `batch_size` queries shares one draw of demonstrations
(the paper draws per query; this keeps the estimate unbiased, with more variance between draws).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmtlab.data.interleaved import PROMPTS, Document, document_ids, largest_sprite, sprite_names
from mmtlab.data.pairs import ImageCache
from mmtlab.eval.captioning import caption_scores, normalize
from mmtlab.models.generate import continuation_logprobs
from mmtlab.progress import track

TASKS = ("caption", "vqa", "classify")
MAX_NEW_TOKENS = {"caption": 20, "vqa": 6}
ZERO_SHOT_TEXT_DEMOS = 2


@dataclass(frozen=True)
class Item:
    record: int  # index into its split's records
    prompt: str  # what the model continues
    answers: tuple[str, ...]  # references (captions) or the one correct answer

    def demo(self) -> str:
        return f"{self.prompt} {self.answers[0]}"


def task_items(task: str, records: Sequence, seed: int = 0) -> list[Item]:
    """The evaluation items of `task` on `records` (query and support alike)."""
    if task == "caption":
        return [
            Item(i, PROMPTS["caption"], tuple(c for c in r.captions if c and c.strip()))
            for i, r in enumerate(records)
            if any(c and c.strip() for c in r.captions)
        ]
    if task == "vqa":
        from mmtlab.data.emoji_scenes.vqa import make_questions

        return [Item(q.record, q.prompt, (q.answer,)) for q in make_questions(records, seed)]
    if task == "classify":
        names = sprite_names()
        return [
            Item(i, PROMPTS["classify"], (names[sid],))
            for i, r in enumerate(records)
            if (sid := largest_sprite(r)) is not None
        ]
    raise ValueError(f"unknown few-shot task {task!r}; choose from {', '.join(TASKS)}")


@torch.no_grad()
def answer(
    model,
    tokenizer,
    task: str,
    queries: Sequence[Item],
    query_images: ImageCache,
    support: Sequence[Item],
    support_images: ImageCache,
    shots: int,
    *,
    classes: Sequence[str] = (),
    num_beams: int = 3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> list[str | None]:
    """The model's answer to every query after `shots` demonstrations: its continuation of the
    prompt, or for `classify` the most likely of `classes`; None where an image could not be decoded."""
    model.eval()
    media_id, max_len = model.media_id, model.cfg.text.max_len
    if task == "classify":
        if not classes:
            raise ValueError("classify: the class names to rank are needed (classes=...)")
        candidates = class_tokens(tokenizer, PROMPTS["classify"], classes)
        max_new = max(len(c) for c in candidates)
    else:
        max_new = MAX_NEW_TOKENS[task]
    groups: dict[int, list[int]] = defaultdict(list)
    for qi, q in enumerate(queries):  # prompt length without demonstrations: equal within a group
        groups[len(tokenizer.tok.encode(q.prompt, add_special_tokens=False).ids)].append(qi)
    batches = [g[s : s + batch_size] for _, g in sorted(groups.items()) for s in range(0, len(g), batch_size)]
    out: list[str | None] = [None] * len(queries)
    for b, batch in enumerate(track(batches, f"{task}, {shots} shots", enabled=progress)):
        rng = np.random.default_rng([seed, TASKS.index(task), shots, b])
        n_demos = shots or ZERO_SHOT_TEXT_DEMOS
        demos = [support[int(i)] for i in rng.choice(len(support), size=n_demos, replace=False)]
        demo_images = [support_images.get(d.record) for d in demos] if shots else []
        if any(im is None for im in demo_images):
            continue
        rows, images = [], []
        for qi in batch:
            q = queries[qi]
            img = query_images.get(q.record)
            if img is None:
                continue
            items: list[Path | str] = []
            for d in demos:
                items += ([Path("demo")] if shots else []) + [d.demo()]
            items += [Path("query"), q.prompt]
            ids, _ = document_ids(Document(items), tokenizer, media_id, max_len, len(items))
            ids = ids[:-1]  # the query's prompt is continued, not closed with [SEP]
            if len(ids) + max_new > max_len:
                raise ValueError(
                    f"a {shots}-shot {task} prompt of {len(ids)} tokens leaves no room under the LM's "
                    f"max_len {max_len}; use fewer shots"
                )
            rows.append((qi, ids))
            images += [*demo_images, img]
        if not rows:
            continue
        pixels = query_images.stack(images)  # [N, 3, H, W] images or [N, T, 3, H, W] clips
        counts = torch.full((len(rows),), len(demo_images) + 1, dtype=torch.long)
        if task == "classify":
            media = model.media_tokens(pixels, counts)  # the whole group's images in one pass
            for r, (qi, ids) in enumerate(rows):
                prompt = torch.tensor([ids], dtype=torch.long)
                context = (media[r : r + 1], (prompt == media_id).sum(1))
                scores = continuation_logprobs(model.decode, context, prompt, candidates)
                out[qi] = classes[int(scores.argmax())]
            continue
        prompt = torch.tensor([ids for _, ids in rows], dtype=torch.long)
        ids = model.generate(prompt, pixels, counts, max_new_tokens=max_new, method="beam", num_beams=num_beams)
        for (qi, _), row in zip(rows, ids):
            out[qi] = tokenizer.decode(row[prompt.shape[1] :])
    return out


def class_tokens(tokenizer, prompt: str, classes: Sequence[str]) -> list[list[int]]:
    """Each class name's tokens as the continuation of `prompt` (as a demonstration "prompt name"
    tokenizes), closed by the end-of-chunk token."""
    enc = tokenizer.tok.encode
    head = enc(prompt, add_special_tokens=False).ids
    out = []
    for name in classes:
        full = enc(f"{prompt} {name}", add_special_tokens=False).ids
        tail = full[len(head) :] if full[: len(head)] == head else enc(f" {name}", add_special_tokens=False).ids
        out.append(tail + [tokenizer.sep_id])
    return out


def score(task: str, queries: Sequence[Item], answers: Sequence[str | None]) -> float:
    """CIDEr (x100) for captioning, exact-match accuracy (%) otherwise."""
    done = [(q, a) for q, a in zip(queries, answers) if a is not None]
    if not done:
        raise ValueError(f"{task}: no query could be answered (undecodable images?)")
    if task == "caption":
        return caption_scores(
            {i: a for i, (_, a) in enumerate(done)}, {i: list(q.answers) for i, (q, _) in enumerate(done)}
        )["cider"]
    return 100.0 * sum(normalize(a) == normalize(q.answers[0]) for q, a in done) / len(done)


METRIC = {"caption": "CIDEr", "vqa": "accuracy %", "classify": "accuracy %"}
CONDITIONS = ("own", "shuffled", "none")


@torch.no_grad()
def image_worth(
    model, tokenizer, records: Sequence, *, n_docs: int = 240, max_chunks: int = 8, seed: int = 0,
    batch_size: int = 16, frame_stride: int = 1, progress: bool = True,
) -> dict:  # fmt: skip
    """Next-token loss (nats per text token) on held-out documents built from `records`, per task,
    with each document's own images, with the images of other documents (a derangement within the
    batch: same count and positions) and with none (gates skipped: the frozen LM). A model that
    reads its images has own < shuffled; own = shuffled = none means it ignores them. Far less
    noisy than few-shot accuracy on a few hundred queries. Records of a video build give clip
    documents (clips of the resampler's max_frames frames, every `frame_stride`-th)."""
    from mmtlab.data.interleaved import InterleavedDocuments, build_documents
    from mmtlab.objectives.caption import IGNORE, caption_loss, next_token_labels

    model.eval()
    docs = build_documents(records, n_docs, max_chunks, seed)
    frames = model.cfg.flamingo.max_frames
    collate = InterleavedDocuments(docs, model.image_size, max_images=max_chunks, frames=frames,
                                   frame_stride=frame_stride).collator(tokenizer)  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys((*CONDITIONS, "tokens"), 0.0))
    by_task = [[d for d in docs if d.task == t] for t in TASKS]
    batches = [group[i : i + batch_size] for group in by_task for i in range(0, len(group), batch_size)]
    for chunk in track(batches, "held-out documents", enabled=progress):
        b = collate(chunk)
        labels = next_token_labels(b.tokens, b.text_mask, b.target_mask)
        n = b.images.shape[0] if b.images is not None else 0
        perm = torch.randperm(n, generator=gen)
        other = torch.empty_like(perm)
        other[perm] = perm.roll(1)  # every image goes to another slot
        own = model.media_tokens(b.images, b.image_counts) if n else None
        # (a lone image has no other to swap with: it stays, so every condition sums the same tokens)
        media = {"own": own, "shuffled": model.media_tokens(b.images[other], b.image_counts) if n > 1 else own}
        media["none"] = None
        s = sums[chunk[0].task]
        s["tokens"] += int((labels != IGNORE).sum())
        for c in CONDITIONS:
            s[c] += float(caption_loss(model(b.tokens, media[c])[:, :-1], labels, reduction="sum"))
    out = {}
    for task, s in sums.items():
        out[task] = {c: s[c] / max(s["tokens"], 1) for c in CONDITIONS} | {"tokens": int(s["tokens"])}
    total = sum(s["tokens"] for s in sums.values())
    out["all"] = {c: sum(s[c] for s in sums.values()) / max(total, 1) for c in CONDITIONS} | {"tokens": int(total)}
    return out


def media_source(model, records: Sequence, frame_stride: int = 1):
    """Images, or for a video build (data/video.py) clips of the resampler's `max_frames` frames
    (every `frame_stride`-th, as training read them): Flamingo reads clips as frames -> frozen
    vision -> resampler with time embeddings."""
    from mmtlab.data.video import VideoCache, is_clip

    if records and is_clip(records[0].path):
        return VideoCache(records, model.image_size, frames=model.cfg.flamingo.max_frames, stride=frame_stride)
    return ImageCache(records, model.image_size)


def evaluate_fewshot(
    model,
    tokenizer,
    query_records: Sequence,
    support_records: Sequence,
    *,
    tasks: Sequence[str] = TASKS,
    shots: Sequence[int] = (0, 4, 8, 16),
    max_items: int | None = 200,
    num_beams: int = 3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    examples: int = 3,
    frame_stride: int = 1,
) -> dict:
    """{task: {"metric", "n", "scores": {shots: value}, "examples"}} over the first `max_items`
    queries of each task (the same queries for every number of shots)."""
    query_images = media_source(model, query_records, frame_stride)
    support_images = media_source(model, support_records, frame_stride)
    result = {}
    for task in tasks:
        queries = task_items(task, query_records, seed)[:max_items]
        support = task_items(task, support_records, seed + 1)
        classes = sorted({x.answers[0] for x in (*queries, *support)}) if task == "classify" else ()
        r = {"metric": METRIC[task], "n": len(queries), "scores": {}, "examples": {}}
        if classes:
            r["classes"] = len(classes)
        for k in shots:
            answers = answer(
                model, tokenizer, task, queries, query_images, support, support_images, k, classes=classes,
                num_beams=num_beams, batch_size=batch_size, seed=seed, progress=progress,
            )  # fmt: skip
            r["scores"][k] = score(task, queries, answers)
            r["examples"][k] = [
                {"prompt": q.prompt, "predicted": a, "reference": q.answers[0]}
                for q, a in list(zip(queries, answers))[:examples]
            ]
        result[task] = r
    return result


def plot_fewshot(result: dict, path: Path, title: str = "") -> Path:
    """Score vs number of shots, one panel per task (metrics differ in scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if t in result]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        scores = result[task]["scores"]
        ks = sorted(int(k) for k in scores)
        ax.plot(ks, [scores[k] if k in scores else scores[str(k)] for k in ks], marker="o")
        ax.set_xticks(ks)
        ax.set_xlabel("shots (0: two text-only demonstrations)")
        ax.set_ylabel(result[task]["metric"])
        ax.set_title(f"{task} (n={result[task]['n']})")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
