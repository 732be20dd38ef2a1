"""The sprite atlas: emoji artwork plus CLDR names, keywords, categories and colour names.

The atlas is built once by tools/build_sprite_atlas.py and shipped in `assets/`; this module only
reads it. Sprite ids are positions in `assets/sprites.json`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

# Order in which `basic_order` interleaves categories: concrete, visually distinct things first
# (they are easiest to learn from 64 px images); people last (many near-identical gendered variants).
BASIC_CATEGORY_ORDER = (
    "animals",
    "food",
    "plants",
    "smileys",
    "travel",
    "objects",
    "activities",
    "weather",
    "symbols",
    "people",
)


@dataclass(frozen=True)
class SpriteInfo:
    id: int
    char: str
    name: str
    keywords: tuple[str, ...]
    category: str
    color: str
    codepoints: tuple[str, ...]


class SpriteAtlas:
    """All sprites of the atlas. `rgba(i)` returns sprite i as a square RGBA image (cached)."""

    def __init__(self, atlas: Image.Image, meta: dict, digest: str = "") -> None:
        self.sprite_size: int = int(meta["sprite_size"])
        self.columns: int = int(meta["columns"])
        self.info: tuple[SpriteInfo, ...] = tuple(
            SpriteInfo(
                int(s["id"]),
                s["char"],
                s["name"],
                tuple(s["keywords"]),
                s["category"],
                s["color"],
                tuple(s["codepoints"]),
            )
            for s in meta["sprites"]
        )
        if [s.id for s in self.info] != list(range(len(self.info))):
            raise ValueError("sprites.json: sprite ids must be 0..N-1 in order")
        self._atlas = atlas.convert("RGBA")
        self._cache: dict[int, Image.Image] = {}
        self.digest = digest  # sha256 of the asset files; datasets record it to detect asset changes

    @classmethod
    def load(cls, path: str | Path | None = None) -> SpriteAtlas:
        """Load from a directory holding atlas.png + sprites.json (default: the packaged assets)."""
        if path is None:
            return _packaged_atlas()
        path = Path(path)
        return cls._from_bytes((path / "atlas.png").read_bytes(), (path / "sprites.json").read_bytes())

    @classmethod
    def _from_bytes(cls, png: bytes, meta_json: bytes) -> SpriteAtlas:
        import io

        digest = hashlib.sha256(png + meta_json).hexdigest()
        return cls(Image.open(io.BytesIO(png)), json.loads(meta_json), digest)

    def __len__(self) -> int:
        return len(self.info)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.info]

    @property
    def keywords(self) -> list[tuple[str, ...]]:
        return [s.keywords for s in self.info]

    @property
    def categories(self) -> list[str]:
        return [s.category for s in self.info]

    @property
    def colors(self) -> list[str]:
        return [s.color for s in self.info]

    def rgba(self, i: int) -> Image.Image:
        """Sprite i as a `sprite_size`² RGBA image. Treat it as read-only: it is shared via the cache."""
        im = self._cache.get(i)
        if im is None:
            if not 0 <= i < len(self.info):
                raise IndexError(f"sprite id {i} out of range 0..{len(self.info) - 1}")
            s = self.sprite_size
            x, y = (i % self.columns) * s, (i // self.columns) * s
            im = self._cache[i] = self._atlas.crop((x, y, x + s, y + s))
        return im

    def heldout_ids(self, fraction: float = 0.1, seed: int = 0) -> list[int]:
        """A deterministic held-out vocabulary for open-vocabulary tests, stratified by category.

        Stratifying keeps every category represented on both sides, so a held-out test is about
        unseen sprites, not an unseen kind of thing.
        """
        return list(_heldout(self, fraction, seed))

    def basic_order(self, exclude: Sequence[int] = ()) -> list[int]:
        """All sprite ids, the most "basic" first: categories interleaved round-robin (in
        BASIC_CATEGORY_ORDER), within a category single-codepoint sprites with short names first.
        Used to pick a small vocabulary (`num_sprites`) that still spans many kinds of things."""
        skip = set(exclude)
        per_cat: dict[str, list[SpriteInfo]] = {}
        for s in self.info:
            if s.id not in skip:
                per_cat.setdefault(s.category, []).append(s)
        queues = []
        cats = [c for c in BASIC_CATEGORY_ORDER if c in per_cat] + sorted(set(per_cat) - set(BASIC_CATEGORY_ORDER))
        for c in cats:
            queues.append(sorted(per_cat[c], key=lambda s: (len(s.codepoints) > 1, len(s.name.split()), s.id)))
        order: list[int] = []
        depth = 0
        while len(order) < sum(len(q) for q in queues):
            order.extend(q[depth].id for q in queues if depth < len(q))
            depth += 1
        return order


@functools.lru_cache(maxsize=1)
def _packaged_atlas() -> SpriteAtlas:
    assets = resources.files("mmtlab.data.emoji_scenes") / "assets"
    return SpriteAtlas._from_bytes((assets / "atlas.png").read_bytes(), (assets / "sprites.json").read_bytes())


@functools.lru_cache(maxsize=16)
def _heldout(atlas: SpriteAtlas, fraction: float, seed: int) -> tuple[int, ...]:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"heldout fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E1D]))
    chosen: list[int] = []
    for cat in sorted(set(atlas.categories)):
        ids = [s.id for s in atlas.info if s.category == cat]
        k = int(round(fraction * len(ids)))
        chosen.extend(int(i) for i in rng.permutation(ids)[:k])
    return tuple(sorted(chosen))
