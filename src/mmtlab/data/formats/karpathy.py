"""Karpathy-split caption JSON (`dataset_coco.json`, `dataset_flickr30k.json`, `dataset_flickr8k.json`).

The format (from Karpathy & Fei-Fei's NeuralTalk splits):

    {"dataset": "flickr30k",
     "images": [{"filename": "1000092795.jpg", "imgid": 0, "split": "train", "sentids": [0, 1, ...],
                 "sentences": [{"raw": "Two young guys ...", "tokens": ["two", ...], "imgid": 0,
                                "sentid": 0}, ...],
                 "filepath": "val2014", "cocoid": 391895}, ...]}      # filepath/cocoid: COCO only

Images live at `image_root/filepath/filename` (COCO) or `image_root/filename` (Flickr, no filepath).
Without an explicit image_root, the JSON's folder is used, or its `images/` subfolder if it has one
(the layout of an emoji-scenes build: `images/{split}/...`, filepath = split).
COCO's splits are train / val / test / restval; the usual "Karpathy train" is train + restval, so
pass split=["train", "restval"] for it.

mmtlab's emoji-scenes export adds keys that standard readers ignore: per image "boxes" (pixel
[x1, y1, x2, y2], x2/y2 exclusive), "labels" (sprite ids), "phrases" (one list of grounding phrases
per sentence, each {start, end, text, box_indices, sprite_id}), "noisy"/"caption_source" (pretrain
pairs whose caption belongs to another image) and "background"; per sentence "style".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TOKEN = re.compile(r"[a-z0-9]+(?:['’][a-z0-9]+)*")
_KNOWN_IMAGE_KEYS = {"filename", "filepath", "imgid", "split", "sentids", "sentences", "boxes", "labels", "phrases"}


@dataclass
class ImageRecord:
    image_id: int
    path: Path
    split: str
    captions: list[str]
    boxes: list[list[float]] | None = None
    labels: list[int] | None = None
    phrases: list[list[dict]] | None = None  # per caption, aligned with `captions`
    extra: dict[str, Any] = field(default_factory=dict)  # any other per-image keys (cocoid, noisy ...)


def tokenize(raw: str) -> list[str]:
    """Karpathy-style tokens: lower-case words, punctuation dropped."""
    return _TOKEN.findall(raw.lower())


def read_karpathy(
    json_path: str | Path, image_root: str | Path | None = None, split: str | Sequence[str] | None = None
) -> list[ImageRecord]:
    """Read a Karpathy JSON. `image_root` defaults to the JSON's folder (its `images/` subfolder if
    present); `split` is a name or a list of names (None: all). Raises ValueError naming the file and
    field when the JSON is malformed."""
    json_path = Path(json_path)
    if image_root is None:
        image_root = json_path.parent / "images" if (json_path.parent / "images").is_dir() else json_path.parent
    root = Path(image_root)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{json_path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{json_path}: expected an object with an 'images' list (Karpathy format)")
    wanted = None if split is None else ({split} if isinstance(split, str) else set(split))

    records = []
    seen_splits: set[str] = set()
    for i, img in enumerate(data["images"]):
        where = f"{json_path}: images[{i}]"
        if not isinstance(img, dict):
            raise ValueError(f"{where}: expected an object, got {type(img).__name__}")
        # Validate every entry, not only the requested split: a broken file should fail loudly.
        img_split = _field(img, "split", str, where)
        filename = _field(img, "filename", str, where)
        sentences = _field(img, "sentences", list, where)
        captions = []
        for j, sent in enumerate(sentences):
            if not isinstance(sent, dict):
                raise ValueError(f"{where}.sentences[{j}]: expected an object")
            if isinstance(sent.get("raw"), str):
                captions.append(sent["raw"])
            elif isinstance(sent.get("tokens"), list):
                captions.append(" ".join(map(str, sent["tokens"])))
            else:
                raise ValueError(f"{where}.sentences[{j}]: needs a 'raw' string or a 'tokens' list")
        filepath = img.get("filepath")
        path = root / filepath / filename if filepath else root / filename
        phrases = img.get("phrases")
        if phrases is None and any("phrases" in s for s in sentences):
            phrases = [s.get("phrases", []) for s in sentences]
        if phrases is not None and (not isinstance(phrases, list) or len(phrases) != len(captions)):
            raise ValueError(f"{where}: 'phrases' must be a list with one entry per sentence")
        image_id = img.get("imgid", img.get("cocoid", i))
        if not isinstance(image_id, int):
            raise ValueError(f"{where}: 'imgid' must be an integer, got {image_id!r}")
        extra = {k: v for k, v in img.items() if k not in _KNOWN_IMAGE_KEYS}
        if any("style" in s for s in sentences):
            extra["styles"] = [s.get("style") for s in sentences]
        seen_splits.add(img_split)
        if wanted is not None and img_split not in wanted:
            continue
        records.append(
            ImageRecord(image_id, path, img_split, captions, img.get("boxes"), img.get("labels"), phrases, extra)
        )
    if wanted is not None and not wanted & seen_splits:
        raise ValueError(
            f"{json_path}: no images in split {sorted(wanted)}; "
            f"splits present: {', '.join(sorted(seen_splits)) or 'none'}"
        )
    return records


def _field(obj: dict, name: str, kind: type, where: str):
    if name not in obj:
        raise ValueError(f"{where}: missing field '{name}'")
    if not isinstance(obj[name], kind):
        raise ValueError(f"{where}: field '{name}' must be {kind.__name__}, got {type(obj[name]).__name__}")
    return obj[name]


def karpathy_images(images: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Number images and sentences the Karpathy way (imgid 0..N-1, sentid running over all sentences).

    Each input mapping has "filename", "split", "captions" (list of str), optionally "filepath",
    "styles" (one per caption) and any further keys, which are copied onto the image entry.
    """
    out = []
    sentid = 0
    for imgid, img in enumerate(images):
        captions = list(img["captions"])
        styles = img.get("styles")
        sentences = []
        for k, raw in enumerate(captions):
            sent = {"raw": raw, "tokens": tokenize(raw), "imgid": imgid, "sentid": sentid + k}
            if styles is not None:
                sent["style"] = styles[k]
            sentences.append(sent)
        entry = {"filename": img["filename"]}
        if img.get("filepath"):
            entry["filepath"] = img["filepath"]
        entry.update(
            {
                "imgid": imgid,
                "split": img["split"],
                "sentids": list(range(sentid, sentid + len(captions))),
                "sentences": sentences,
            }
        )
        entry.update({k: v for k, v in img.items() if k not in {"filename", "filepath", "split", "captions", "styles"}})
        sentid += len(captions)
        out.append(entry)
    return out


def write_karpathy(json_path: str | Path, images: Iterable[Mapping[str, Any]], *, dataset: str) -> dict:
    """Write a Karpathy JSON from image mappings (see `karpathy_images`); returns image/sentence counts."""
    entries = karpathy_images(images)
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        # Compact separators: the file holds every caption and phrase of the dataset.
        json.dump({"dataset": dataset, "images": entries}, f, ensure_ascii=False, separators=(",", ":"))
    return {"images": len(entries), "sentences": sum(len(e["sentences"]) for e in entries)}
