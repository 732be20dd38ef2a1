"""Text assembled from pieces, some of which are grounded mentions, with exact character offsets.

Captions are built by filling templates with pieces; offsets are computed once, when the pieces are
joined, so whitespace clean-up and casing can never desynchronise a phrase from its span.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Mention:
    box_indices: tuple[int, ...]  # indices into the scene's sprites
    sprite_id: int


@dataclass(frozen=True)
class Phrase:
    start: int
    end: int  # exclusive: caption[start:end] == text
    text: str
    box_indices: tuple[int, ...]
    sprite_id: int

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "end": self.end,
            "text": self.text,
            "box_indices": list(self.box_indices),
            "sprite_id": self.sprite_id,
        }


Piece = tuple[str, "Mention | None"]


class Pieces:
    """An ordered list of (text, mention-or-None) pieces."""

    def __init__(self, items: Iterable[Piece] = ()) -> None:
        self.items: list[Piece] = list(items)

    @classmethod
    def of(cls, value: Pieces | str) -> Pieces:
        return value if isinstance(value, Pieces) else cls([(value, None)])

    @classmethod
    def mention(cls, text: str, mention: Mention) -> Pieces:
        return cls([(text, mention)])

    def __add__(self, other: Pieces | str) -> Pieces:
        return Pieces(self.items + Pieces.of(other).items)

    def __radd__(self, other: str) -> Pieces:
        return Pieces.of(other) + self

    @classmethod
    def join(cls, parts: list[Pieces | str], sep: str = " ") -> Pieces:
        out = Pieces()
        for i, p in enumerate(parts):
            out = out + (sep if i else "") + p
        return out


def join_list(items: list[Pieces], conjunction: str = "and", oxford: bool = False) -> Pieces:
    """ "x", "x and y", "x, y and z" (or "x, y, and z" with the Oxford comma)."""
    if len(items) <= 2:
        return Pieces.join(items, f" {conjunction} ")
    head = Pieces.join(items[:-1], ", ")
    return head + ("," if oxford else "") + f" {conjunction} " + items[-1]


def fill(template: str, slots: dict[str, Pieces | str]) -> Pieces:
    """`template` with {name} fields replaced by slot values (which may carry mentions)."""
    out = Pieces()
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        if literal:
            out = out + literal
        if field is not None:
            if field not in slots:
                raise KeyError(f"template {template!r} uses unknown slot {field!r}")
            out = out + slots[field]
    return out


def render(pieces: Pieces, case: str = "keep") -> tuple[str, list[Phrase]]:
    """Join pieces into (text, phrases): collapse runs of spaces, drop spaces before punctuation, apply
    `case` ("keep" | "lower" | "sentence" | "title") without changing any offsets."""
    text = ""
    spans: list[tuple[int, int, Mention]] = []
    for raw, mention in pieces.items:
        s = raw
        if mention is not None:
            s = s.strip()
        if (not text or text.endswith(" ")) and s.startswith(" "):
            s = s.lstrip(" ")
        if s[:1] in {",", ".", ":", ";", "!", "?"} and text.endswith(" "):
            text = text.rstrip(" ")
        while "  " in s:
            s = s.replace("  ", " ")
        if mention is not None and s:
            spans.append((len(text), len(text) + len(s), mention))
        text += s
    stripped = text.rstrip(" ")
    cased = _apply_case(stripped, case)
    if len(cased) != len(stripped):  # a casing rule that changes length (e.g. "ß") would shift spans
        cased = stripped
    phrases = [Phrase(a, b, cased[a:b], m.box_indices, m.sprite_id) for a, b, m in spans]
    return cased, phrases


def _apply_case(text: str, case: str) -> str:
    if case == "lower":
        return text.lower()
    if case == "sentence":
        return text[:1].upper() + text[1:]
    if case == "title":
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    return text
