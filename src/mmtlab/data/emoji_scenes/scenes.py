"""Procedural scenes: 1-4 emoji sprites on a described background, with exact boxes.

A scene is a pure function of (seed, split, index, image_size, vocabulary): its random generator is
seeded from those numbers alone, so scene i of a split is the same whether 10 or 10 million scenes
are generated, in any order, by any number of worker processes.

Boxes are (x1, y1, x2, y2) in pixels with exclusive x2/y2 (Pillow's convention): the extent of the
sprite's visible alpha (alpha >= ALPHA_VISIBLE) after scaling, flipping and placement, clipped to the
image. Later sprites are drawn on top of earlier ones; a placement is rejected if it would hide more
than half of an earlier sprite, so every box still frames something a caption can talk about.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .english import with_article
from .palette import COLOR_NAMES, COLORS
from .sprites import SpriteAtlas

ALPHA_VISIBLE = 32  # a sprite pixel counts as visible from 1/8 opacity (below: anti-aliasing fringe)
MIN_VISIBLE_FRACTION = 0.5  # of a sprite's in-image pixels left uncovered by later sprites
MIN_INSIDE_FRACTION = 0.6  # of a sprite's pixels that must land inside the image
PLACEMENT_TRIES = 12
PIXEL_NOISE_STD = 2.0  # a little sensor-like noise so backgrounds are not flat (PNGs grow 2.3x with it)

SPRITE_COUNT_PROBS = {1: 0.3, 2: 0.3, 3: 0.22, 4: 0.18}
REPEAT_PROB = 0.25  # chance that a further sprite repeats one already in the scene ("two cats")
# Sprite side as a fraction of the image side, by size name.
SIZES = {"small": (0.22, 0.33), "medium": (0.36, 0.48), "large": (0.52, 0.66)}
SIZE_PROBS = {"small": 0.3, "medium": 0.45, "large": 0.25}
BACKGROUND_KIND_PROBS = {"solid": 0.55, "gradient": 0.2, "pattern": 0.25}
PATTERNS = ("striped", "dotted", "checkered")

SCENE_STREAM = 0  # sub-streams of a scene's seed; captions and pairing use others (see captions.py)


def split_code(split: str) -> int:
    """A stable integer for a split name (Python's hash() is salted per process, crc32 is not)."""
    return zlib.crc32(split.encode("utf-8"))


def scene_rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split_code(split), index, stream]))


@dataclass(frozen=True)
class Background:
    kind: str  # "solid" | "gradient" | "pattern"
    colors: tuple[str, ...]  # one colour for solid, (from, to) for gradient, (base, ink) for pattern
    pattern: str | None = None  # "striped" | "dotted" | "checkered" for kind == "pattern"
    direction: str | None = None  # gradient: "horizontal" (left to right) | "vertical" (top to bottom)

    @property
    def phrase(self) -> str:
        """The plain English description, e.g. "a striped red and white background"."""
        if self.kind == "solid":
            return with_article(f"{self.colors[0]} background")
        if self.kind == "gradient":
            return with_article(f"{self.colors[0]} to {self.colors[1]} gradient")
        return f"a {self.pattern} {self.colors[0]} and {self.colors[1]} background"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["colors"] = list(self.colors)
        d["phrase"] = self.phrase
        return d


@dataclass(frozen=True)
class PlacedSprite:
    sprite_id: int
    box: tuple[int, int, int, int]  # visible alpha extent, clipped to the image, x2/y2 exclusive
    size_name: str  # "small" | "medium" | "large"
    flipped: bool  # mirrored left-right
    xy: tuple[int, int]  # top-left of the scaled sprite's square canvas (may lie outside the image)
    side: int  # side of the scaled sprite's square canvas in pixels
    visible: float  # fraction of its in-image pixels not covered by later sprites

    def to_dict(self) -> dict:
        return {
            "sprite_id": self.sprite_id,
            "box": list(self.box),
            "size_name": self.size_name,
            "flipped": self.flipped,
            "xy": list(self.xy),
            "side": self.side,
            "visible": round(self.visible, 3),
        }


@dataclass
class Scene:
    image: Image.Image  # RGB
    sprites: list[PlacedSprite]  # in drawing order: later ones are in front
    background: Background
    seed: int = 0
    split: str = ""
    index: int = 0
    image_size: int = 64
    extra: dict = field(default_factory=dict)

    @property
    def boxes(self) -> list[list[int]]:
        return [list(s.box) for s in self.sprites]

    @property
    def labels(self) -> list[int]:
        return [s.sprite_id for s in self.sprites]


@functools.lru_cache(maxsize=4096)
def render_sprite(atlas: SpriteAtlas, sprite_id: int, side: int, flipped: bool) -> tuple[Image.Image, np.ndarray]:
    """Sprite scaled to side x side (premultiplied-alpha Lanczos, so edges do not pick up the colour of
    transparent pixels) and optionally mirrored; returns the RGBA image and its visible-pixel mask."""
    im = atlas.rgba(sprite_id)
    if side != im.width:
        im = im.convert("RGBa").resize((side, side), Image.Resampling.LANCZOS).convert("RGBA")
    if flipped:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = np.asarray(im.getchannel("A")) >= ALPHA_VISIBLE
    return im, mask


def default_vocabulary(atlas: SpriteAtlas, split: str) -> tuple[list[int], list[int]]:
    """(vocab, required) used when the caller gives none: all non-held-out sprites, and for the
    "heldout" split the held-out sprites as the required pool."""
    held = atlas.heldout_ids()
    held_set = set(held)
    vocab = [i for i in range(len(atlas)) if i not in held_set]
    return vocab, (held if split == "heldout" else [])


def generate_scene(
    seed: int,
    split: str,
    index: int,
    *,
    image_size: int = 64,
    vocab: Sequence[int] | None = None,
    required: Sequence[int] | None = None,
    atlas: SpriteAtlas | None = None,
) -> Scene:
    """Scene `index` of `split`. `vocab`: sprite ids to draw from; `required`: if non-empty, the first
    sprite comes from this pool (the heldout split puts a held-out sprite in every image)."""
    atlas = atlas or SpriteAtlas.load()
    if vocab is None or required is None:
        dv, dr = default_vocabulary(atlas, split)
        vocab = dv if vocab is None else vocab
        required = dr if required is None else required
    if len(vocab) == 0 and len(required) == 0:
        raise ValueError("generate_scene: empty sprite vocabulary")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = scene_rng(seed, split, index, SCENE_STREAM)
    background = _sample_background(rng)
    canvas = _paint_background(background, image_size, rng)
    ids = _sample_sprite_ids(rng, vocab, required)
    placed = _place_sprites(rng, atlas, ids, image_size, canvas)
    return Scene(canvas, placed, background, seed, split, index, image_size)


def _choice(rng: np.random.Generator, probs: dict):
    keys = list(probs)
    return keys[int(rng.choice(len(keys), p=np.array(list(probs.values())) / sum(probs.values())))]


def _sample_background(rng: np.random.Generator) -> Background:
    kind = _choice(rng, BACKGROUND_KIND_PROBS)
    if kind == "solid":
        return Background("solid", (COLOR_NAMES[rng.integers(len(COLOR_NAMES))],))
    a, b = (COLOR_NAMES[int(i)] for i in rng.choice(len(COLOR_NAMES), size=2, replace=False))
    if kind == "gradient":
        return Background("gradient", (a, b), direction=("horizontal", "vertical")[int(rng.integers(2))])
    return Background("pattern", (a, b), pattern=PATTERNS[int(rng.integers(len(PATTERNS)))])


def _paint_background(bg: Background, size: int, rng: np.random.Generator) -> Image.Image:
    c = [np.array(COLORS[name], dtype=np.float32) for name in bg.colors]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if bg.kind == "solid":
        img = np.broadcast_to(c[0], (size, size, 3)).copy()
    elif bg.kind == "gradient":
        t = (xx if bg.direction == "horizontal" else yy) / (size - 1)
        img = c[0] * (1 - t[..., None]) + c[1] * t[..., None]
    else:
        period = max(4, int(round(size * rng.uniform(0.09, 0.19))))
        if bg.pattern == "striped":
            coord = (xx, yy, xx + yy, xx - yy)[int(rng.integers(4))]  # vertical/horizontal/diagonals
            ink = (coord % period) < period / 2
        elif bg.pattern == "dotted":
            r = period * 0.28
            ink = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) <= r * r
        else:  # checkered
            ink = ((xx // period) + (yy // period)) % 2 == 1
        img = np.where(ink[..., None], c[1], c[0])
    img = img + rng.normal(0.0, PIXEL_NOISE_STD, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def _sample_sprite_ids(rng: np.random.Generator, vocab: Sequence[int], required: Sequence[int]) -> list[int]:
    n = _choice(rng, SPRITE_COUNT_PROBS)
    pool = vocab if len(vocab) else required
    ids = [int(required[rng.integers(len(required))])] if len(required) else [int(pool[rng.integers(len(pool))])]
    while len(ids) < n:
        if rng.random() < REPEAT_PROB:
            ids.append(ids[int(rng.integers(len(ids)))])
        else:
            ids.append(int(pool[rng.integers(len(pool))]))
    # The first sprite is drawn first (at the back): the placement rule protects it from being more
    # than half hidden, and a required (held-out) sprite is never dropped for lack of space.
    return ids


def _place_sprites(
    rng: np.random.Generator, atlas: SpriteAtlas, ids: list[int], size: int, canvas: Image.Image
) -> list[PlacedSprite]:
    owner = np.full((size, size), -1, dtype=np.int16)  # index of the front-most sprite at each pixel
    totals: list[int] = []  # in-image visible pixels of each accepted sprite
    accepted: list[dict] = []
    for sprite_id in ids:
        size_name = _choice(rng, SIZE_PROBS)
        lo, hi = SIZES[size_name]
        side = max(8, int(round(size * rng.uniform(lo, hi))))
        flipped = bool(rng.random() < 0.5)
        im, mask = render_sprite(atlas, sprite_id, side, flipped)
        margin = int(0.15 * side)
        for attempt in range(PLACEMENT_TRIES):
            x = int(rng.integers(-margin, size - side + margin + 1))
            y = int(rng.integers(-margin, size - side + margin + 1))
            if not accepted and attempt == PLACEMENT_TRIES - 1:
                x = y = (size - side) // 2  # the first sprite always fits in the centre
            clipped = _clip_mask(mask, x, y, size)
            if clipped is None or clipped[0].sum() < MIN_INSIDE_FRACTION * mask.sum():
                continue
            sub, (x1, y1, x2, y2) = clipped
            region = owner[y1:y2, x1:x2]
            covered = np.bincount(region[sub].astype(np.int64) + 1, minlength=len(accepted) + 1)[1:]
            still = [int(np.count_nonzero(owner == j)) - int(covered[j]) for j in range(len(accepted))]
            if any(still[j] < MIN_VISIBLE_FRACTION * totals[j] for j in range(len(accepted))):
                continue
            region[sub] = len(accepted)
            totals.append(int(sub.sum()))
            canvas.paste(im, (x, y), im)
            accepted.append(
                {
                    "sprite_id": sprite_id,
                    "size_name": size_name,
                    "flipped": flipped,
                    "xy": (x, y),
                    "side": side,
                    "box": _mask_box(sub, x1, y1),
                }
            )
            break
        # A sprite that found no acceptable place is simply left out: scenes stay valid.
    return [
        PlacedSprite(
            a["sprite_id"],
            a["box"],
            a["size_name"],
            a["flipped"],
            a["xy"],
            a["side"],
            int(np.count_nonzero(owner == k)) / max(1, totals[k]),
        )
        for k, a in enumerate(accepted)
    ]


def _clip_mask(mask: np.ndarray, x: int, y: int, size: int):
    """The part of `mask` placed at (x, y) that lies inside the image, and its image rectangle."""
    side = mask.shape[0]
    x1, y1, x2, y2 = max(0, x), max(0, y), min(size, x + side), min(size, y + side)
    if x2 <= x1 or y2 <= y1:
        return None
    return mask[y1 - y : y2 - y, x1 - x : x2 - x], (x1, y1, x2, y2)


def _mask_box(sub: np.ndarray, ox: int, oy: int) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(sub.any(axis=1))
    cols = np.flatnonzero(sub.any(axis=0))
    return (ox + int(cols[0]), oy + int(rows[0]), ox + int(cols[-1]) + 1, oy + int(rows[-1]) + 1)
