"""Flickr30k Entities (Plummer et al. 2015): phrase grounding as sentence markup plus VOC-style boxes.

    ROOT/Sentences/<image id>.txt    one caption per line; every grounded phrase is marked up as
                                     [/EN#<entity id>/<type>[/<type> ...] <phrase words>]
    ROOT/Annotations/<image id>.xml  <annotation><size>...</size> and one <object> per box, with one
                                     <name> per entity the box belongs to and a <bndbox> in 1-based
                                     inclusive pixels; entities without a box have an <object> with
                                     <nobndbox>1</nobndbox> (not visible) or <scene>1</scene>

The reader returns phrases as character spans of the plain sentence (markup removed), so they line
up with a tokenizer's offsets, and boxes as (x1, y1, x2, y2) float pixels with exclusive x2/y2 (the
emoji-scenes convention): xmin - 1, ymin - 1, xmax, ymax. The writer is its exact inverse for
integer boxes, which is how `mmtlab data build emoji-scenes` exports its grounding.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SENTENCES, ANNOTATIONS = "Sentences", "Annotations"
EXPORT_DIR = "flickr30k_entities"  # where a dataset build puts its export
_MARKUP = re.compile(r"\[/EN#(\d+)/([^\s\]]+) ([^\]]*)\]")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class EntityPhrase:
    start: int  # character span in the plain sentence: text == sentence[start:end]
    end: int
    text: str
    entity: str  # entity id (shared by the phrases of one coreference chain)
    types: tuple[str, ...]  # coarse categories (people, clothing, ... ; emoji-scenes: sprite category)
    boxes: tuple[Box, ...] = ()  # the entity's boxes; empty for non-visual / scene entities


@dataclass
class EntitySentence:
    text: str
    phrases: list[EntityPhrase]


@dataclass
class EntitiesImage:
    image_id: str
    width: int
    height: int
    sentences: list[EntitySentence]
    boxes: dict[str, list[Box]] = field(default_factory=dict)  # entity id -> boxes
    scene: set[str] = field(default_factory=set)
    nobox: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------------------- reading


def parse_sentence(line: str) -> tuple[str, list[tuple[int, int, str, str, tuple[str, ...]]]]:
    """One marked-up line -> (plain text, [(start, end, text, entity id, types)])."""
    plain, spans, pos = [], [], 0
    n = 0  # length of the plain text so far
    for m in _MARKUP.finditer(line):
        before = line[pos : m.start()]
        plain.append(before)
        n += len(before)
        words = m.group(3)
        spans.append((n, n + len(words), words, m.group(1), tuple(m.group(2).split("/"))))
        plain.append(words)
        n += len(words)
        pos = m.end()
    plain.append(line[pos:])
    return "".join(plain), spans


def read_sentences(path: str | Path) -> list[tuple[str, list[tuple[int, int, str, str, tuple[str, ...]]]]]:
    """Every non-empty line of a Sentences/<id>.txt file, parsed (see `parse_sentence`)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [parse_sentence(line.rstrip("\r")) for line in lines if line.strip()]


def read_annotations(path: str | Path) -> tuple[int, int, dict[str, list[Box]], set[str], set[str]]:
    """An Annotations/<id>.xml file -> (width, height, boxes by entity, scene entities, non-visual
    entities). Raises ValueError naming the file when it is not well-formed."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: not well-formed XML ({e})") from None
    try:
        size = root.find("size")
        width, height = int(size.findtext("width")), int(size.findtext("height"))
        boxes: dict[str, list[Box]] = {}
        scene, nobox = set(), set()
        for obj in root.findall("object"):
            names = [n.text.strip() for n in obj.findall("name") if n.text]
            bb = obj.find("bndbox")
            if bb is not None:
                x1, y1, x2, y2 = (int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
                box = (float(x1 - 1), float(y1 - 1), float(x2), float(y2))
                for name in names:
                    boxes.setdefault(name, []).append(box)
                continue
            if int(obj.findtext("nobndbox") or 0) > 0:
                nobox.update(names)
            if int(obj.findtext("scene") or 0) > 0:
                scene.update(names)
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a Flickr30k Entities annotation ({e})") from None
    return width, height, boxes, scene, nobox


def read_image(root: str | Path, image_id: str) -> EntitiesImage:
    """Sentences and boxes of one image; each phrase carries its entity's boxes."""
    root = Path(root)
    width, height, boxes, scene, nobox = read_annotations(root / ANNOTATIONS / f"{image_id}.xml")
    sentences = []
    for text, spans in read_sentences(root / SENTENCES / f"{image_id}.txt"):
        phrases = [EntityPhrase(a, b, t, e, ty, tuple(boxes.get(e, ()))) for a, b, t, e, ty in spans]
        sentences.append(EntitySentence(text, phrases))
    return EntitiesImage(image_id, width, height, sentences, boxes, scene, nobox)


@dataclass
class EntitiesSet:
    images: dict[str, EntitiesImage]
    skipped: dict[str, str]  # image id -> why it was skipped (missing or corrupt files)


def load_entities(root: str | Path, image_ids: Iterable[str] | None = None) -> EntitiesSet:
    """The images `image_ids` (default: every Sentences/*.txt) of a Flickr30k Entities root. Missing
    or corrupt files are skipped and reported, not raised: one bad file must not stop an evaluation."""
    root = Path(root)
    if not (root / SENTENCES).is_dir() or not (root / ANNOTATIONS).is_dir():
        raise FileNotFoundError(f"{root}: not a Flickr30k Entities root (needs {SENTENCES}/ and {ANNOTATIONS}/)")
    ids = sorted(p.stem for p in (root / SENTENCES).glob("*.txt")) if image_ids is None else list(image_ids)
    images, skipped = {}, {}
    for i in ids:
        try:
            images[i] = read_image(root, i)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            skipped[i] = str(e)
    return EntitiesSet(images, skipped)


# --------------------------------------------------------------------------------------- writing


def entity_ids(phrases: Iterable[Iterable[Mapping]]) -> dict[tuple[int, ...], int]:
    """An entity per distinct set of boxes a phrase points at ("two cats" -> boxes {1, 2}; "the cat
    on the left" -> {1}), numbered from 1 in order of first mention (0 is Flickr30k's non-visual id)."""
    ids: dict[tuple[int, ...], int] = {}
    for caption in phrases:
        for p in caption:
            key = tuple(sorted(p["box_indices"]))
            if key and key not in ids:
                ids[key] = len(ids) + 1
    return ids


def markup(caption: str, phrases: Sequence[Mapping], ids: Mapping[tuple[int, ...], int], types: Sequence[str]) -> str:
    """`caption` with each phrase wrapped in [/EN#id/type ...]; phrases that overlap an earlier one
    or have no box are left as plain text. Raises ValueError when the caption contains brackets
    (they would be read back as markup)."""
    if "[" in caption or "]" in caption or "\n" in caption:
        raise ValueError(f"caption {caption!r} contains brackets or a newline; it cannot be marked up")
    out, pos = [], 0
    for p in sorted(phrases, key=lambda p: p["start"]):
        key = tuple(sorted(p["box_indices"]))
        if not key or p["start"] < pos or p["end"] <= p["start"]:
            continue
        kinds = "/".join(dict.fromkeys(types[i] for i in key))
        out += [caption[pos : p["start"]], f"[/EN#{ids[key]}/{kinds} {caption[p['start'] : p['end']]}]"]
        pos = p["end"]
    out.append(caption[pos:])
    return "".join(out)


def annotation_xml(filename: str, width: int, height: int, boxes: Sequence[Sequence[float]], ids) -> str:
    """The Annotations/<id>.xml text: one <object> per box, named by every entity containing it."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    for j, (x1, y1, x2, y2) in enumerate(boxes):
        names = [str(eid) for key, eid in ids.items() if j in key]
        if not names:
            continue
        obj = ET.SubElement(root, "object")
        for name in names:
            ET.SubElement(obj, "name").text = name
        bb = ET.SubElement(obj, "bndbox")
        # 1-based inclusive pixels: exclusive x2 in 0-based pixels is the last pixel's 1-based index.
        for k, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bb, k).text = str(int(round(v)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_image(
    root: str | Path,
    image_id: str,
    *,
    filename: str,
    width: int,
    height: int,
    captions: Sequence[str],
    phrases: Sequence[Sequence[Mapping]],
    boxes: Sequence[Sequence[float]],
    types: Sequence[str],
) -> None:
    """Write one image's Sentences/<id>.txt and Annotations/<id>.xml. `phrases[k]` are caption k's
    phrases as dicts with start, end and box_indices (indices into `boxes`); `types[j]` is box j's
    category, written as the phrase type. (Plain writes: an export is made inside a temporary
    directory that is moved into place whole.)"""
    root = Path(root)
    ids = entity_ids(phrases)
    lines = [markup(c, p, ids, types) for c, p in zip(captions, phrases, strict=True)]
    for sub in (SENTENCES, ANNOTATIONS):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / SENTENCES / f"{image_id}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    xml = annotation_xml(filename, width, height, boxes, ids)
    (root / ANNOTATIONS / f"{image_id}.xml").write_text(xml, encoding="utf-8")
