"""Eval-only images for measuring object knowledge: single sprites, and background-controlled groups.

Two kinds of images, both generated on the fly, deterministically, from (seed, split name, index)
exactly like the build's scenes, but under split names of their own (`zeroshot`, `controlled`).
A split name enters every random stream (scenes.scene_rng), so these images are never the
pretraining images (tests/test_zeroshot.py checks it against a build, pixel for pixel):

- `single_sprite(seed, sprite_id, k)`: sprite `sprite_id` alone, at a random position, scale
  (medium to large, wholly inside the image), left-right orientation, on a random background of
  any kind (solid, gradient, pattern). The test images of CLIP-style zero-shot classification.
- `controlled_group(seed, g, vocab, group_size)`: `group_size` scenes that share one background
  (the very same pixels: painted once, noise included) and one sprite count (1-4), and differ only
  in which sprites they show and where: each a different set of sprites from `vocab`. Each scene
  has a descriptive caption that names all its sprites (so it fits no other scene of the group).
  Retrieval within a group cannot use background or count: only the objects tell the candidates
  apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .captions import caption_scene
from .scenes import (
    SIZES,
    SPRITE_COUNT_PROBS,
    Scene,
    _choice,
    _paint_background,
    _place_sprites,
    _sample_background,
    _sample_sprite_ids,
    render_sprite,
    split_code,
)
from .sprites import SpriteAtlas

SINGLES_SPLIT = "zeroshot"
CONTROLLED_SPLIT = "controlled"
SINGLE_SCALE = (SIZES["medium"][0], SIZES["large"][1])  # sprite side / image side: big enough to see
GROUP_TRIES = 200  # re-draws allowed to find group members that fit and differ


def _rng(seed: int, split: str, *key: int) -> np.random.Generator:
    # 0x5106 keeps these streams apart from scenes.scene_rng's four-number keys in any case.
    return np.random.default_rng(np.random.SeedSequence([seed, split_code(split), 0x5106, *key]))


@dataclass
class SingleSprite:
    image: Image.Image  # RGB
    sprite_id: int
    box: tuple[int, int, int, int]  # the scaled sprite's square, x2/y2 exclusive
    background: str  # the background's phrase


def single_sprite(
    seed: int, sprite_id: int, k: int, *, image_size: int = 64, atlas: SpriteAtlas | None = None
) -> SingleSprite:
    """The k-th single-sprite test image of `sprite_id` (a pure function of its arguments)."""
    atlas = atlas or SpriteAtlas.load()
    rng = _rng(seed, SINGLES_SPLIT, sprite_id, k)
    background = _sample_background(rng)
    canvas = _paint_background(background, image_size, rng)
    side = max(8, min(image_size, int(round(image_size * rng.uniform(*SINGLE_SCALE)))))
    im, _ = render_sprite(atlas, sprite_id, side, bool(rng.random() < 0.5))
    x, y = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
    canvas.paste(im, (x, y), im)
    return SingleSprite(canvas, sprite_id, (x, y, x + side, y + side), background.phrase)


@dataclass
class ControlledItem:
    image: Image.Image
    caption: str
    labels: tuple[int, ...]  # sprite ids in the scene, in drawing order
    group: int
    count: int  # sprites in the scene (the same for the whole group)
    background: str  # the background's phrase (the same for the whole group)


def controlled_group(
    seed: int,
    group: int,
    vocab: Sequence[int],
    *,
    group_size: int = 8,
    image_size: int = 64,
    atlas: SpriteAtlas | None = None,
) -> list[ControlledItem]:
    """Group `group` of the controlled retrieval set: `group_size` captioned scenes on one shared
    background with one shared sprite count, every one a different sprite set drawn from `vocab`."""
    if len(vocab) < 2:
        raise ValueError("controlled_group: the vocabulary needs at least 2 sprites")
    atlas = atlas or SpriteAtlas.load()
    rng = _rng(seed, CONTROLLED_SPLIT, group)
    background = _sample_background(rng)
    base = _paint_background(background, image_size, rng)
    count = _choice(rng, SPRITE_COUNT_PROBS)
    items: list[ControlledItem] = []
    seen: set[tuple[int, ...]] = set()
    for _ in range(GROUP_TRIES):
        if len(items) == group_size:
            break
        ids = _sample_sprite_ids(rng, vocab, [])[:count]
        while len(ids) < count:  # _sample_sprite_ids draws its own count; top it up to the group's
            ids.append(int(vocab[rng.integers(len(vocab))]))
        canvas = base.copy()
        placed = _place_sprites(rng, atlas, ids, image_size, canvas)
        key = tuple(sorted(p.sprite_id for p in placed))
        if len(placed) != count or key in seen:
            continue
        index = group * group_size + len(items)
        scene = Scene(canvas, placed, background, seed, CONTROLLED_SPLIT, index, image_size)
        caption = _naming_all(caption_scene(scene, "descriptive", atlas=atlas), count)
        if caption is None:
            continue
        seen.add(key)
        items.append(ControlledItem(canvas, caption, tuple(scene.labels), group, count, background.phrase))
    if len(items) < group_size:
        raise ValueError(f"controlled_group: could not find {group_size} distinct scenes (vocabulary too small?)")
    return items


def _naming_all(captions, count: int) -> str | None:
    """The first caption whose grounded phrases mention every sprite: a caption that names only the
    salient one ("a drawing of a cat.") could fit another scene of the group as well."""
    for c in captions:
        if {i for p in c.phrases for i in p.box_indices} == set(range(count)):
            return c.text
    return None
