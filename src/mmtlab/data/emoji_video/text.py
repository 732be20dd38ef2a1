"""Captions and time questions for emoji-video clips, written from the clip's event list.

Captions come in the three emoji-scenes styles (descriptive: MSR-VTT-like sentences that keep the
order with "then"; alt_text: WebVid-like keyword strings; narrative: a longer spoken account).
Questions are the kinds whose answers need time: what happened first, what happened after X, which
way did X move, how many things appeared. Answers are one word, so VideoQA accuracy is exact match.
"""

from __future__ import annotations

import numpy as np

from mmtlab.data.emoji_scenes.english import with_article as _article
from mmtlab.data.emoji_video.clips import Clip, Event

PAST = {"move": "moved", "appear": "appeared", "disappear": "disappeared", "grow": "grew",
        "shrink": "shrank", "swap": "swapped"}  # fmt: skip
PRESENT = {"appear": "appears", "disappear": "disappears", "grow": "grows bigger", "shrink": "gets smaller"}
PATH = {"left": "from right to left", "right": "from left to right", "up": "upwards", "down": "downwards"}
QUESTION_TYPES = ("first", "after", "direction", "count_appear")


def event_phrase(clip: Clip, e: Event, verb: str = "walks") -> str:
    who = _article(clip.names[e.actor])
    if e.kind == "move":
        return f"{who} {verb} {PATH[e.direction]}"
    if e.kind == "swap":
        return f"{who} and {_article(clip.names[e.other])} swap places"
    return f"{who} {PRESENT[e.kind]}"


def captions(clip: Clip, rng: np.random.Generator) -> dict[str, list[str]]:
    """{style: [captions]}: 5 descriptive, 1 alt_text, 1 narrative."""
    a, b = clip.events
    desc = []
    for verb, join in (("walks", ", then "), ("moves", " and then "), ("goes", ", after that "),
                       ("slides", ", then "), ("travels", " before ")):  # fmt: skip
        first, second = event_phrase(clip, a, verb), event_phrase(clip, b, verb)
        if join == " before ":  # same order, said from the second event: "X before Y" keeps time order
            desc.append(f"{first} before {second}")
        else:
            desc.append(f"{first}{join}{second}")
    desc = [d[0].upper() + d[1:] if i % 2 else d for i, d in enumerate(desc)]
    words = [clip.names[e.actor] + " " + PAST[e.kind] for e in clip.events]
    alt = f"{' '.join(words)} {clip.background} background stock footage"
    narrative = (
        f"in this short clip on a {clip.background} background, first {event_phrase(clip, a)}, "
        f"and right after that {event_phrase(clip, b)}, and that is the end of it"
    )
    order = rng.permutation(5).tolist()
    return {"descriptive": [desc[i] for i in order], "alt_text": [alt], "narrative": [narrative]}


def questions(clip: Clip) -> list[dict]:
    """[{question, answer, type}] — every question a clip can answer."""
    a, b = clip.events
    qs = [
        {"type": "first", "question": "what happened first?", "answer": PAST[a.kind]},
        {
            "type": "after",
            "question": f"what happened after the {clip.names[a.actor]} {PAST[a.kind]}?",
            "answer": PAST[b.kind],
        },  # fmt: skip
        {
            "type": "count_appear",
            "question": "how many times did something appear?",
            "answer": str(sum(e.kind == "appear" for e in clip.events)),
        },  # fmt: skip
    ]
    for e in clip.events:
        if e.kind == "move":
            qs.append({"type": "direction", "question": f"which way did the {clip.names[e.actor]} move?",
                       "answer": e.direction})  # fmt: skip
            break
    return qs
