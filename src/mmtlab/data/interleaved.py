"""Interleaved image-text documents: built from an emoji-scenes dataset, stored as JSONL shards in
the layout of the public web corpora, read back into token sequences with `<image>` markers.

Shard layout (one JSON document per line; image paths relative to the shard's folder, or absolute):

    OBELICS-like  {"images": ["a.png", null, "b.png", null], "texts": [null, "output: ...", null, "..."]}
                  one list entry per position, exactly one of images[i] / texts[i] set
    MMC4-like     {"text_list": ["...", "..."], "image_info": [{"image_name": "a.png", "matched_text_index": 0}]}
                  each image goes right before the text it is matched to

A document becomes [CLS] <image> text [SEP] <image> text [SEP] ...: `<image>` is Flamingo's media
marker (models/flamingo.py gives it its own id) and [SEP] is `<|endofchunk|>`, closing every text.
Corrupt lines and documents whose images do not decode are skipped and counted, never fatal.
A media path may be a video clip (.mp4, data/video.py): the collator decodes `frames` frames of it
and the batch's media are [N, T, 3, H, W] (Flamingo's resampler gives frame t its time embedding).

The emoji-scenes documents (`build_documents`) mix one task per document, 1 to `max_chunks`
image-text chunks each, in the formats the few-shot evaluation prompts with (eval/fewshot.py); the
records of an emoji-video build give clip documents the same way (captions, and VQA from qa.json):

    caption    output: <the image's caption>
    vqa        question: <question> answer: <answer>          (data/emoji_scenes/vqa.py)
    classify   object: <name of the largest sprite>

Image-caption pairs are one-chunk caption documents (`pair_documents`): Flamingo's image-text
pair datasets in the same format.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmtlab.batches import DocumentBatch  # noqa: F401  (defined with the other batch types)
from mmtlab.data.pairs import BAD_IMAGE_ERRORS, load_image, to_float
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.data.video import is_clip, load_clip
from mmtlab.io import atomic_write_json, atomic_write_text

TASKS = ("caption", "vqa", "classify")
IMAGE = "<image>"  # what the JSONL's image positions become in text renderings
END_OF_CHUNK = "<|endofchunk|>"


@dataclass
class Document:
    """Positions in order: a Path is an image or a clip, a str is text."""

    items: list[Path | str]
    task: str = ""

    @property
    def images(self) -> list[Path]:
        return [x for x in self.items if isinstance(x, Path)]

    def texts(self) -> list[str]:
        return [x for x in self.items if isinstance(x, str)]

    def render(self) -> str:
        return "".join(IMAGE if isinstance(x, Path) else f"{x}{END_OF_CHUNK}" for x in self.items)


# -- task chunks (shared with the few-shot prompts) -------------------------------------------------


def sprite_names() -> list[str]:
    from mmtlab.data.emoji_scenes.captions import lexicon
    from mmtlab.data.emoji_scenes.sprites import SpriteAtlas

    return [w.name.lower() for w in lexicon(SpriteAtlas.load())]


def largest_sprite(record) -> int | None:
    """Sprite id of the record's largest sprite (by total box area), the classification label."""
    from mmtlab.data.emoji_scenes.vqa import entities

    if not record.labels or not record.boxes:
        return None
    return entities(record.boxes, record.labels)[0].sprite_id


PROMPTS = {"caption": "output:", "classify": "object:"}  # vqa: the question's own prompt


# -- building emoji-scenes documents ---------------------------------------------------------------


def task_chunks(records: Sequence, seed: int = 0) -> dict[str, list[tuple[int, str]]]:
    """Per task, the (record index, chunk text) available from `records`."""
    from mmtlab.data.emoji_scenes.vqa import make_questions

    names = sprite_names()
    rng = np.random.default_rng([seed, 0xC4])
    out: dict[str, list[tuple[int, str]]] = {t: [] for t in TASKS}
    for ri, r in enumerate(records):
        caps = [c for c in r.captions if c and c.strip()]
        if caps:
            out["caption"].append((ri, f"{PROMPTS['caption']} {caps[int(rng.integers(len(caps)))]}"))
        sid = largest_sprite(r)
        if sid is not None:
            out["classify"].append((ri, f"{PROMPTS['classify']} {names[sid]}"))
    by_record: dict[int, list] = {}
    for q in make_questions(records, seed):
        by_record.setdefault(q.record, []).append(q)
    for ri, qs in by_record.items():
        q = qs[int(rng.integers(len(qs)))]
        out["vqa"].append((ri, q.text))
    return out


def build_documents(records: Sequence, n_docs: int, max_chunks: int = 8, seed: int = 0) -> list[Document]:
    """`n_docs` documents of 1..max_chunks chunks of one task each, drawn from `records`: a pure
    function of (records, n_docs, max_chunks, seed)."""
    chunks = task_chunks(records, seed)
    tasks = [t for t in TASKS if chunks[t]]
    rng = np.random.default_rng([seed, 0xD0C])
    docs = []
    for _ in range(n_docs):
        task = tasks[int(rng.integers(len(tasks)))]
        pool = chunks[task]
        n = int(rng.integers(1, max_chunks + 1))
        items: list[Path | str] = []
        for k in rng.choice(len(pool), size=min(n, len(pool)), replace=False):
            ri, text = pool[int(k)]
            items += [Path(records[ri].path), text]
        docs.append(Document(items, task))
    return docs


def pair_documents(records: Sequence) -> list[Document]:
    """Every (image, caption) pair of `records` as a one-chunk caption document."""
    return [
        Document([Path(r.path), f"{PROMPTS['caption']} {c}"], "caption")
        for r in records
        for c in r.captions
        if c and c.strip()
    ]


# -- JSONL shards -----------------------------------------------------------------------------------


def write_shards(docs: Sequence[Document], out: str | Path, per_shard: int = 5000) -> list[Path]:
    """OBELICS-like JSONL shards `docs-00000.jsonl` ... in `out`; image paths relative to it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = out.resolve()
    paths = []
    for s in range(0, max(len(docs), 1), per_shard):
        lines = []
        for i, d in enumerate(docs[s : s + per_shard], s):
            images = [os.path.relpath(x.resolve(), base) if isinstance(x, Path) else None for x in d.items]
            texts = [x if isinstance(x, str) else None for x in d.items]
            lines.append(json.dumps({"id": i, "task": d.task, "images": images, "texts": texts}))
        path = out / f"docs-{s // per_shard:05d}.jsonl"
        atomic_write_text(path, "\n".join(lines) + "\n")
        paths.append(path)
    return paths


def build_interleaved(
    out: str | Path, data: str | Path, docs: int = 20000, max_chunks: int = 8, split: str | None = None, seed: int = 0
) -> dict:
    """Documents from the build at `data` (emoji-scenes, or emoji-video's clips) written as shards
    to `out` (`mmtlab data interleaved`, a study's `documents:`), with meta.json recording the
    parameters; a folder already built with the same ones is reused, as emoji-scenes builds are."""
    from mmtlab.config import DataConfig
    from mmtlab.data.sources import load_split
    from mmtlab.data.video import is_video_root

    if docs < 1 or max_chunks < 1:
        raise ValueError(f"docs and max_chunks must be at least 1 (got {docs}, {max_chunks})")
    out = Path(out)
    video = is_video_root(data)
    split = split or ("train" if video else "pretrain")
    params = {"data": str(data), "docs": docs, "max_chunks": max_chunks, "split": split, "seed": seed}
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if meta is not None and meta.get("params") == params:
        return {**meta, "skipped": True}
    built = build_documents(load_split(DataConfig(root=str(data)), split), docs, max_chunks, seed)
    for old in out.glob("docs-*.jsonl"):  # a rebuild with fewer shards must not keep stale ones
        old.unlink()
    shards = write_shards(built, out)
    meta = {"params": params, "documents": len(built), "media": sum(len(d.images) for d in built),
            "shards": len(shards), "video": video, "example": built[0].render()[:300]}  # fmt: skip
    atomic_write_json(out / "meta.json", meta)  # last: its presence marks a complete build
    return meta


def shard_files(path: str | Path) -> list[Path]:
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(
            f"data.interleaved: no .jsonl shards at {path}; write them with `mmtlab data interleaved --out {path}`"
        )
    return files


def parse_document(obj: dict, root: Path) -> Document:
    """One JSONL object in either layout; ValueError if it is neither."""

    def image(p) -> Path:
        if not isinstance(p, str) or not p:
            raise ValueError(f"image entry {p!r} is not a path")
        return Path(p) if os.path.isabs(p) else root / p

    if "images" in obj and "texts" in obj:  # OBELICS
        images, texts = obj["images"], obj["texts"]
        if not isinstance(images, list) or not isinstance(texts, list) or len(images) != len(texts):
            raise ValueError("images and texts must be lists of one length")
        items: list[Path | str] = []
        for im, tx in zip(images, texts):
            if (im is None) == (tx is None):
                raise ValueError("each position needs exactly one of an image and a text")
            if tx is not None and not isinstance(tx, str):
                raise ValueError(f"text entry {tx!r} is not a string")
            items.append(image(im) if im is not None else tx)
        return Document(items, str(obj.get("task", "")))
    if "text_list" in obj:  # MMC4
        texts = obj["text_list"]
        before: dict[int, list[Path]] = {}
        for info in obj.get("image_info") or []:
            before.setdefault(int(info["matched_text_index"]), []).append(image(info["image_name"]))
        items = []
        for i, t in enumerate(texts):
            items += before.get(i, [])
            items.append(str(t))
        return Document(items, str(obj.get("task", "")))
    raise ValueError("neither the OBELICS layout (images, texts) nor MMC4's (text_list, image_info)")


def read_documents(path: str | Path) -> tuple[list[Document], int]:
    """Documents of every shard at `path`, and the number of corrupt lines skipped."""
    docs, corrupt = [], 0
    for f in shard_files(path):
        root = f.parent
        with open(f, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    docs.append(parse_document(json.loads(line), root))
                except (ValueError, KeyError, TypeError):
                    corrupt += 1
    if not docs:
        raise FileNotFoundError(f"data.interleaved: {path} holds no readable documents ({corrupt} corrupt lines)")
    return docs, corrupt


# -- training items ---------------------------------------------------------------------------------


def document_ids(
    doc: Document, tokenizer: TextTokenizer, media_id: int | None, max_len: int, max_images: int
) -> tuple[list[int], int]:
    """[CLS] <image> text [SEP] ... as ids, cut at `max_len` tokens and `max_images` images (a cut
    never leaves a trailing <image>). `media_id` None drops the images (text for the LM). Returns
    the ids and how many images they hold."""
    ids, n_images = [tokenizer.cls_id], 0
    for x in doc.items:
        if isinstance(x, Path):
            if media_id is None:
                continue
            if n_images == max_images or len(ids) + 2 > max_len:
                break
            ids.append(media_id)
            n_images += 1
        else:
            piece = tokenizer.tok.encode(x, add_special_tokens=False).ids + [tokenizer.sep_id]
            ids += piece[: max_len - len(ids)]
            if len(ids) >= max_len:
                break
    if media_id is not None and ids[-1] == media_id:
        ids.pop()
        n_images -= 1
    return ids, n_images


class InterleavedDocuments(Dataset):
    """Documents as training items: `with_images` False gives their text alone (the LM's data).
    `frames` / `frame_stride`: what a clip decodes to (Flamingo: flamingo.max_frames, data.frame_stride)."""

    def __init__(
        self,
        docs: Sequence[Document],
        image_size: int,
        with_images: bool = True,
        max_images: int = 8,
        frames: int | None = None,
        frame_stride: int = 1,
    ):
        self.docs, self.image_size, self.with_images, self.max_images = docs, image_size, with_images, max_images
        self.frames, self.frame_stride = frames, frame_stride
        self.empty_captions = 0
        self.corrupt_documents = 0  # unreadable shard lines skipped before (set by the reader's caller)

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i: int) -> Document:
        return self.docs[i]

    def captions(self) -> Iterator[str]:
        for d in self.docs:
            yield from d.texts()

    def collator(self, tokenizer: TextTokenizer):
        return DocumentCollator(
            tokenizer, self.image_size, self.with_images, self.max_images, self.frames, self.frame_stride
        )


class DocumentCollator:
    def __init__(
        self,
        tokenizer: TextTokenizer,
        image_size: int,
        with_images: bool,
        max_images: int,
        frames: int | None = None,
        frame_stride: int = 1,
    ):
        self.tokenizer, self.image_size, self.with_images, self.max_images = (
            tokenizer,
            image_size,
            with_images,
            max_images,
        )
        self.frames, self.frame_stride = frames, frame_stride

    def load(self, path: Path) -> Tensor:
        """An image as uint8 [3, H, W], a clip as [frames, 3, H, W]; BAD_IMAGE_ERRORS for either
        that does not decode (a clip's VideoDecodeError is a ValueError)."""
        if not is_clip(path):
            return load_image(path, self.image_size)
        if self.frames is None:  # a programming error, not bad data: not caught as a bad file
            raise RuntimeError(f"a document holds a clip ({path}); the collator needs frames=...")
        return load_clip(path, self.image_size, self.frames, self.frame_stride)

    def __call__(self, docs: list[Document]) -> DocumentBatch:
        tok = self.tokenizer
        media_id = tok.vocab_size if self.with_images else None
        rows, images, counts, skipped = [], [], [], 0
        for d in docs:
            ids, n = document_ids(d, tok, media_id, tok.max_len, self.max_images)
            try:
                pixels = [self.load(p) for p in d.images[:n]]
            except BAD_IMAGE_ERRORS:
                skipped += 1
                continue
            rows.append(ids)
            images += pixels
            counts.append(n)
        if not rows:
            raise RuntimeError("every document in a batch had an undecodable image; check the shards' image files")
        if len({x.dim() for x in images}) > 1:
            raise ValueError("a batch mixes images and clips; keep them in separate shards / datasets")
        width = max(len(r) for r in rows)
        tokens = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = torch.tensor(r)
        # By length, not by id: a GPT-2 vocabulary pads with <|endoftext|>, which also ends chunks.
        mask = torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]
        return DocumentBatch(
            tokens,
            mask,
            mask & (tokens != tok.vocab_size) if self.with_images else mask,
            to_float(torch.stack(images)) if images else None,  # [N, 3, H, W] images or [N, T, 3, H, W] clips
            torch.tensor(counts, dtype=torch.long) if self.with_images else None,
            skipped,
        )


class Mixture:
    """Several training datasets with per-dataset loss weights (Flamingo: interleaved documents and
    image-text pairs). data/loader.py draws micro-batches from them in turn, so every optimizer step
    accumulates the weighted gradients of all of them."""

    def __init__(self, datasets: dict[str, Dataset], weights: dict[str, float]):
        self.datasets, self.weights = datasets, weights
        self.empty_captions = 0
        self.corrupt_documents = 0

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets.values())

    def captions(self) -> Iterator[str]:
        for d in self.datasets.values():
            yield from d.captions()
