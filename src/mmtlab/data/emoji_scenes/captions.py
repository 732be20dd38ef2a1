"""Captions for a scene in three corpus styles, each with phrase grounding.

- `descriptive`: COCO / Flickr30k-like sentences (counts, spatial relations, sizes, background),
  five different ones per image, sometimes naming only the most salient objects.
- `alt_text`: Conceptual-Captions / web-like: keyword bags, partial mentions, stock-photo filler.
- `narrative`: Localized-Narratives-like transcribed speech with locations and disfluencies.

Every noun phrase that mentions a sprite is a grounded `Phrase` (character span + the indices of the
boxes it refers to; a counted phrase such as "two cats" refers to every instance). The wording lives
in the tables below; the code only picks from them and fills templates.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .caption_words import (
    ALT_BACKGROUND_PROB,
    ALT_BACKGROUNDS,
    ALT_CASES,
    ALT_MENTION_PROB,
    ALT_PREFIXES,
    ALT_SEPARATORS,
    ALT_SUFFIXES,
    BACKGROUND_NOUNS,
    COLOR_ADJ_PROB,
    DESCRIPTIVE_TEMPLATES,
    DISFLUENCIES,
    DISFLUENCY_PROB,
    HEDGES,
    HYPERNYMS,
    NAME_PROB,
    NARRATIVE_BACKGROUNDS,
    NARRATIVE_CONNECTORS,
    NARRATIVE_OPENERS,
    RELATIONS,
    SIZE_ADJ_PROB,
    SIZE_ADJECTIVES,
    SIZE_WORDS,
    VERBS,
)
from .english import count_phrase, head_index, is_are, is_plural, pluralize, with_article
from .grounded_text import Mention, Phrase, Pieces, fill, join_list, render
from .palette import COLOR_NAMES
from .scenes import Scene, scene_rng
from .sprites import SpriteAtlas

STYLES = ("descriptive", "alt_text", "narrative")
CAPTION_STREAM = 1  # scene_rng sub-stream (scenes.py uses 0)
DESCRIPTIVE_PER_IMAGE = 5

# ------------------------------------------------------------------------------------- data types


@dataclass(frozen=True)
class Caption:
    text: str
    phrases: list[Phrase]
    style: str

    def to_dict(self) -> dict:
        return {"text": self.text, "style": self.style, "phrases": [p.to_dict() for p in self.phrases]}


@dataclass(frozen=True)
class Words:
    """How captions may refer to one sprite."""

    name: str  # the CLDR name, made phrase-friendly ("person: beard" -> "person with beard")
    nouns: tuple[str, ...]  # keyword synonyms usable as nouns
    keywords: tuple[str, ...]
    color: str


@dataclass
class Entity:
    """All instances of one sprite in a scene: captions count them together ("two cats")."""

    sprite_id: int
    indices: tuple[int, ...]
    center: tuple[float, float]
    box: tuple[int, int, int, int]  # union of the instances' boxes
    area: float  # visible area, for salience
    size_name: str | None  # shared by all instances, else None
    front: int  # drawing index of the front-most instance

    @property
    def count(self) -> int:
        return len(self.indices)


@functools.lru_cache(maxsize=4)
def lexicon(atlas: SpriteAtlas) -> tuple[Words, ...]:
    out = []
    for s in atlas.info:
        name = s.name.replace(": ", " with ") if ":" in s.name else s.name
        words = name.lower().split()
        head = words[head_index(words)]
        keywords = tuple(k for k in s.keywords if any(c.isalpha() for c in k))
        # A keyword can stand in for the name if it is a known noun or the name's own head noun
        # ("ice" for "shaved ice"), never a modifier taken from the name ("shaved", "hot").
        nouns = tuple(
            k for k in keywords if (k in HYPERNYMS or k == head) and k not in COLOR_NAMES and k != name.lower()
        )
        out.append(Words(name, nouns, keywords, s.color))
    return tuple(out)


def entities_of(scene: Scene) -> list[Entity]:
    """Group instances by sprite; most salient (largest visible area) first."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(scene.sprites):
        groups.setdefault(s.sprite_id, []).append(i)
    ents = []
    for sid, idx in groups.items():
        boxes = np.array([scene.sprites[i].box for i in idx], dtype=np.float64)
        centers = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1).mean(0)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        vis = np.array([scene.sprites[i].visible for i in idx])
        sizes = {scene.sprites[i].size_name for i in idx}
        ents.append(
            Entity(
                sid,
                tuple(idx),
                (float(centers[0]), float(centers[1])),
                (int(boxes[:, 0].min()), int(boxes[:, 1].min()), int(boxes[:, 2].max()), int(boxes[:, 3].max())),
                float((areas * vis).sum()),
                sizes.pop() if len(sizes) == 1 else None,
                max(idx),
            )
        )
    return sorted(ents, key=lambda e: (-e.area, e.indices[0]))


def relation(a: Entity, b: Entity) -> str:
    """Spatial relation of a to b: front/behind when they overlap, else the dominant axis."""
    ix = max(0, min(a.box[2], b.box[2]) - max(a.box[0], b.box[0]))
    iy = max(0, min(a.box[3], b.box[3]) - max(a.box[1], b.box[1]))
    area = lambda e: (e.box[2] - e.box[0]) * (e.box[3] - e.box[1])
    if ix * iy > 0.2 * min(area(a), area(b)):
        return "front" if a.front > b.front else "behind"
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


# --------------------------------------------------------------------------------------- captions


def caption_scene(
    scene: Scene,
    style: str = "descriptive",
    n: int | None = None,
    *,
    atlas: SpriteAtlas | None = None,
    rng: np.random.Generator | None = None,
) -> list[Caption]:
    """`n` captions (default: 5 descriptive, else 1) of `scene` in `style`. Deterministic: the random
    stream is derived from the scene's (seed, split, index) and the style unless `rng` is given."""
    if style not in STYLES:
        raise ValueError(f"unknown caption style {style!r}; choose from {', '.join(STYLES)}")
    atlas = atlas or SpriteAtlas.load()
    n = (DESCRIPTIVE_PER_IMAGE if style == "descriptive" else 1) if n is None else n
    rng = rng or scene_rng(scene.seed, scene.split, scene.index, CAPTION_STREAM * 16 + STYLES.index(style))
    writer = _Writer(scene, lexicon(atlas), rng)
    if style == "descriptive":
        return writer.descriptive(n)
    make = writer.alt_text if style == "alt_text" else writer.narrative
    return [make() for _ in range(n)]


class _Writer:
    def __init__(self, scene: Scene, words: Sequence[Words], rng: np.random.Generator) -> None:
        self.scene = scene
        self.words = words
        self.rng = rng
        self.ents = entities_of(scene)

    # ------------------------------------------------------------------ shared helpers
    def pick(self, options: Sequence):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def mention(self, e: Entity, text: str) -> Pieces:
        return Pieces.mention(text, Mention(e.indices, e.sprite_id))

    def noun(self, e: Entity, *, sized: bool | None = None, colored: bool | None = None) -> str:
        """The bare noun phrase for an entity, e.g. "big red apple" (no determiner)."""
        w = self.words[e.sprite_id]
        noun = w.name if (not w.nouns or self.chance(NAME_PROB)) else self.pick(w.nouns)
        if (self.chance(COLOR_ADJ_PROB) if colored is None else colored) and w.color not in noun.split():
            noun = f"{w.color} {noun}"
        sizes = SIZE_ADJECTIVES.get(e.size_name or "medium", ())
        if sizes and not SIZE_WORDS & set(noun.split()) and (self.chance(SIZE_ADJ_PROB) if sized is None else sized):
            noun = f"{self.pick(sizes)} {noun}"
        return noun

    def np(self, e: Entity, **kw) -> Pieces:
        """A grounded, counted noun phrase: "a big cat face", "two apples"."""
        return self.np_number(e, **kw)[0]

    def np_number(self, e: Entity, **kw) -> tuple[Pieces, bool]:
        """The noun phrase and whether it is grammatically plural (for "is"/"are")."""
        noun = self.noun(e, **kw)
        return self.mention(e, count_phrase(e.count, noun)), is_plural(e.count, noun)

    def background_np(self) -> tuple[str, tuple[str, ...]]:
        bg = self.scene.background
        key = bg.pattern if bg.kind == "pattern" else bg.kind
        template, preps = self.pick(BACKGROUND_NOUNS[key])
        phrase = template.format(*bg.colors)
        if phrase.startswith("a "):  # "a {0} wall" with orange -> "an orange wall"
            phrase = with_article(phrase[2:])
        return phrase, preps

    # ------------------------------------------------------------------ descriptive
    def descriptive(self, n: int) -> list[Caption]:
        templates = [t for k, t in DESCRIPTIVE_TEMPLATES if len(self.ents) >= k]
        order = [templates[i] for i in self.rng.permutation(len(templates))]
        out: list[Caption] = []
        seen: set[str] = set()
        attempts = 0
        while len(out) < n and attempts < 20 * n:
            template = order[attempts % len(order)]
            attempts += 1
            text, phrases = render(fill(template, self.descriptive_slots()), "sentence")
            if text not in seen:
                seen.add(text)
                out.append(Caption(text, phrases, "descriptive"))
        return out

    def descriptive_slots(self) -> dict[str, Pieces | str]:
        ents = self.ents
        salient = [e for e in ents if e.area >= 0.5 * ents[0].area][:2]
        a, b = (ents[0], ents[1]) if len(ents) > 1 and self.chance(0.6) else self._random_pair()
        bg, preps = self.background_np()
        rel = self.pick(RELATIONS[relation(a, b)]) if b is not None else ""
        preps = tuple(p for p in preps if p != rel) or preps  # not "in front of x in front of a wall"
        all_nps = [self.np_number(e) for e in ents]
        salient_nps = [self.np_number(e) for e in salient]
        a_np, a_plural = self.np_number(a)
        return {
            "all": join_list([p for p, _ in all_nps], oxford=self.chance(0.2)),
            "all_sized": join_list([self.np(e, sized=True) for e in ents]),
            "salient": join_list([p for p, _ in salient_nps]),
            "a": a_np,
            "b": self.np(b) if b else "",
            "a_sized": self.np(a, sized=True),
            "b_sized": self.np(b, sized=True) if b else "",
            "rel": rel,
            "be_a": is_are(a_plural),
            "there_all": f"there {is_are(all_nps[0][1])}",  # agrees with the nearest noun
            "verb_salient": self.pick(VERBS[2 if len(salient) > 1 or salient_nps[0][1] else 1]),
            "bg": bg,
            "bgp": f"{self.pick(preps)} {bg}",
        }

    def _random_pair(self) -> tuple[Entity, Entity | None]:
        if len(self.ents) < 2:
            return self.ents[0], None
        i, j = (int(k) for k in self.rng.choice(len(self.ents), size=2, replace=False))
        return self.ents[i], self.ents[j]

    # ------------------------------------------------------------------ alt text
    def alt_text(self) -> Caption:
        mentioned = [self.ents[0]] + [e for e in self.ents[1:] if self.chance(ALT_MENTION_PROB)]
        mentioned = [mentioned[i] for i in self.rng.permutation(len(mentioned))]
        sep = self.pick(ALT_SEPARATORS)
        terms: list[Pieces] = []
        for e in mentioned:
            w = self.words[e.sprite_id]
            name = w.name.lower()
            if e.count > 1 and self.chance(0.5):
                name = pluralize(name)
            head = name if (not w.keywords or self.chance(0.6)) else self.pick(w.keywords)
            terms.append(self.mention(e, head))
            extra = [k for k in w.keywords if k != head]
            for i in self.rng.permutation(len(extra))[: int(self.rng.integers(0, 3))]:
                terms.append(self.mention(e, extra[int(i)]))
        prefix, suffix = self.pick(ALT_PREFIXES), self.pick(ALT_SUFFIXES)
        body = Pieces.join(terms, sep if sep.strip() else self.pick((" ", " and ", ", ")))
        parts: list[Pieces | str] = [prefix + " " + body if prefix else body]
        if self.chance(ALT_BACKGROUND_PROB):
            bg = self.scene.background
            kind = "pattern" if bg.kind == "pattern" else bg.kind
            parts.append(self.pick(ALT_BACKGROUNDS[kind]).format(*bg.colors, p=bg.pattern))
        if suffix:
            parts.append(suffix)
        case = _weighted(self.rng, ALT_CASES)
        text, phrases = render(Pieces.join(parts, sep), case)
        return Caption(text, phrases, "alt_text")

    # ------------------------------------------------------------------ narrative
    def narrative(self) -> Caption:
        ents = sorted(self.ents, key=lambda e: e.center[0]) if self.chance(0.5) else self.ents
        out = Pieces.of(self.pick(NARRATIVE_OPENERS))
        for k, e in enumerate(ents):
            phrase, plural = self.np_number(e)
            if k:
                if self.chance(DISFLUENCY_PROB / 2):
                    out = out + " " + self.pick(HEDGES)
                out = out + " " + self.pick(NARRATIVE_CONNECTORS).format(be=is_are(plural))
            if self.chance(DISFLUENCY_PROB):
                out = out + " " + self.pick(DISFLUENCIES)
            out = out + " " + phrase + " " + self.locations(e)
        bg = self.scene.background
        kind = "pattern" if bg.kind == "pattern" else bg.kind
        out = out + " " + self.pick(NARRATIVE_BACKGROUNDS[kind]).format(*bg.colors, p=bg.pattern)
        text, phrases = render(out + ("." if self.chance(0.5) else ""), "lower")
        return Caption(text, phrases, "narrative")

    def locations(self, e: Entity) -> str:
        spots = [self.location(self.scene.sprites[i].box) for i in e.indices]
        if len(spots) == 1 or len(set(spots)) == 1:
            return spots[0]
        return ", " + " and ".join(f"one {s}" for s in spots)  # "two cats, one on the left and one ..."

    def location(self, box: Sequence[int]) -> str:
        size = self.scene.image_size
        cx, cy = (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size
        h = "left" if cx < 0.38 else "right" if cx > 0.62 else None
        v = "top" if cy < 0.38 else "bottom" if cy > 0.62 else None
        if h and v:
            return f"at the {v} {h} corner"
        if h:
            return f"on the {h} side"
        if v:
            return f"at the {v}"
        return "in the middle"


def _weighted(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]
