"""emoji-video clips: sprites that move, appear, disappear, grow, shrink or swap places, in order.

A clip is two events, one after the other (event i happens during the i-th half of the frames), on
one or two sprites over a solid background. Everything a caption or question says comes from the
event list; every frame's boxes come from the same state machine that renders it, so they are exact.

Time-reversal is built in: `reverse_clip` plays the frames backwards and inverts the events
(appear <-> disappear, left <-> right, grow <-> shrink, reversed order). A clip and its reversal
contain the same frames, so a model that sees any one frame (or an unordered bag of frames) cannot
tell them apart, while the answers to the time questions differ — tests/test_video.py uses this to
show the time questions need time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from mmtlab.data.emoji_scenes.palette import COLORS
from mmtlab.data.emoji_scenes.scenes import render_sprite, scene_rng
from mmtlab.data.emoji_scenes.sprites import SpriteAtlas

MOVES = ("left", "right", "up", "down")  # direction of travel; "left" = from right to left
KINDS = ("move", "appear", "disappear", "grow", "shrink", "swap")
INVERSE = {"appear": "disappear", "disappear": "appear", "grow": "shrink", "shrink": "grow",
           "left": "right", "right": "left", "up": "down", "down": "up"}  # fmt: skip
BACKGROUNDS = ("white", "gray", "blue", "green", "yellow", "pink", "purple", "orange")


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    actor: int  # index into Clip.sprites
    direction: str | None = None  # move: one of MOVES
    other: int | None = None  # swap: the second sprite

    def inverted(self) -> Event:
        if self.kind == "move":
            return replace(self, direction=INVERSE[self.direction])
        return replace(self, kind=INVERSE.get(self.kind, self.kind))


@dataclass(frozen=True)
class SpriteState:
    x: float  # centre, in [0, 1] of the frame
    y: float
    size: float  # side, fraction of the frame
    visible: bool


@dataclass(frozen=True)
class Clip:
    sprites: tuple[int, ...]  # atlas ids
    names: tuple[str, ...]
    background: str
    events: tuple[Event, ...]
    states: tuple[tuple[SpriteState, ...], ...]  # [frame][sprite]
    frame_size: int

    @property
    def num_frames(self) -> int:
        return len(self.states)

    def boxes(self) -> list[list[list[int] | None]]:
        """Per frame, per sprite: [x0, y0, x1, y1] in pixels (None while the sprite is absent)."""
        return [[_box(s, self.frame_size) if s.visible else None for s in frame] for frame in self.states]

    def to_dict(self) -> dict:
        return {
            "sprites": list(self.sprites),
            "names": list(self.names),
            "background": self.background,
            "events": [{k: v for k, v in e.__dict__.items() if v is not None} for e in self.events],
            "boxes": self.boxes(),
        }


def _box(s: SpriteState, size: int) -> list[int]:
    side = max(1, round(s.size * size))
    x0, y0 = round(s.x * size - side / 2), round(s.y * size - side / 2)
    return [x0, y0, x0 + side, y0 + side]


def _lerp(a: SpriteState, b: SpriteState, t: float) -> SpriteState:
    # visibility changes at the midpoint of the event's segment
    vis = a.visible if t < 0.5 else b.visible
    return SpriteState(a.x + (b.x - a.x) * t, a.y + (b.y - a.y) * t, a.size + (b.size - a.size) * t, vis)


def _apply(state: list[SpriteState], e: Event) -> list[SpriteState]:
    """The sprites' state after event `e` (what the event's segment interpolates towards)."""
    out = list(state)
    s = state[e.actor]
    if e.kind == "move":
        dx, dy = {"left": (-0.5, 0), "right": (0.5, 0), "up": (0, -0.5), "down": (0, 0.5)}[e.direction]
        out[e.actor] = replace(s, x=s.x + dx, y=s.y + dy)
    elif e.kind in ("appear", "disappear"):
        out[e.actor] = replace(s, visible=e.kind == "appear")
    elif e.kind in ("grow", "shrink"):
        out[e.actor] = replace(s, size=s.size * (1.6 if e.kind == "grow" else 1 / 1.6))
    elif e.kind == "swap":
        o = state[e.other]
        out[e.actor], out[e.other] = replace(s, x=o.x, y=o.y), replace(o, x=s.x, y=s.y)
    return out


def _sample_events(rng: np.random.Generator, n_sprites: int) -> tuple[list[Event], list[SpriteState]]:
    """Two events and the start state they are consistent with (a sprite that appears starts hidden,
    a moving sprite starts where it has room to travel, ...)."""
    while True:
        kinds = [str(rng.choice(KINDS)) for _ in range(2)]
        if "swap" in kinds and n_sprites < 2:
            continue
        events = []
        for k in kinds:
            actor = int(rng.integers(n_sprites))
            if k == "move":
                events.append(Event(k, actor, direction=str(rng.choice(MOVES))))
            elif k == "swap":
                events.append(Event(k, 0, other=1))
            else:
                events.append(Event(k, actor))
        if events[0] == events[1]:
            continue
        # start state: visibility must make each appear/disappear a real change; moves must stay in frame
        start = []
        for i in range(n_sprites):
            mine = [e for e in events if e.actor == i or e.other == i]
            vis = not (mine and mine[0].kind == "appear")
            kinds_of_mine = {e.kind for e in mine}
            size = 0.22 if "grow" in kinds_of_mine else 0.3 if "shrink" in kinds_of_mine else 0.25
            start.append(SpriteState(0.25 + 0.5 * (i % 2), 0.3 + 0.4 * (i // 2), size, vis))
        state, ok = start, True
        for e in events:
            s = state[e.actor]
            nxt = _apply(state, e)
            n = nxt[e.actor]
            if e.kind == "appear" and s.visible or e.kind == "disappear" and not s.visible:
                ok = False
            if e.kind in ("move", "grow", "shrink", "swap") and not s.visible:
                ok = False
            if e.kind == "swap" and not state[e.other].visible:
                ok = False
            if not (0.1 <= n.x <= 0.9 and 0.1 <= n.y <= 0.9 and n.size <= 0.5):
                ok = False
            state = nxt
        if ok:
            return events, start


def generate_clip(
    atlas: SpriteAtlas,
    vocab: list[int],
    seed: int,
    split: str,
    index: int,
    num_frames: int = 8,
    frame_size: int = 64,
) -> Clip:
    if num_frames < 4 or num_frames % 2:
        raise ValueError(f"num_frames must be even and at least 4, got {num_frames}")
    rng = scene_rng(seed, f"video-{split}", index, 0)
    n_sprites = int(rng.integers(1, 3))
    sprites = tuple(int(i) for i in rng.choice(vocab, size=n_sprites, replace=False))
    events, start = _sample_events(rng, n_sprites)
    # keyframes: start, after event 0, after event 1; frames interpolate within each half
    keys = [start, _apply(start, events[0])]
    keys.append(_apply(keys[1], events[1]))
    half = num_frames // 2
    states = []
    for f in range(num_frames):
        seg, pos = divmod(f, half)
        t = (pos + 0.5) / half
        states.append(tuple(_lerp(a, b, t) for a, b in zip(keys[seg], keys[seg + 1], strict=True)))
    names = tuple(atlas.info[i].name for i in sprites)
    bg = str(rng.choice(BACKGROUNDS))
    return Clip(sprites, names, bg, tuple(events), tuple(states), frame_size)


def reverse_clip(clip: Clip) -> Clip:
    """The same frames played backwards, with the events that describe them."""
    events = tuple(e.inverted() for e in reversed(clip.events))
    return replace(clip, events=events, states=tuple(reversed(clip.states)))


def render_clip(atlas: SpriteAtlas, clip: Clip) -> np.ndarray:
    """uint8 frames [T, H, W, 3]."""
    size = clip.frame_size
    frames = np.empty((clip.num_frames, size, size, 3), dtype=np.uint8)
    cache: dict[tuple[int, int], Image.Image] = {}
    for f, frame in enumerate(clip.states):
        canvas = Image.new("RGB", (size, size), COLORS[clip.background])
        for sprite, s in zip(clip.sprites, frame, strict=True):
            if not s.visible:
                continue
            x0, y0, x1, _ = _box(s, size)
            side = x1 - x0
            if (sprite, side) not in cache:
                cache[sprite, side] = render_sprite(atlas, sprite, side, False)[0]
            im = cache[sprite, side]
            canvas.paste(im, (x0, y0), im)
        frames[f] = np.asarray(canvas)
    return frames
