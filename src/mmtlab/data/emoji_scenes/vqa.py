"""Visual questions about emoji-scenes images, derived from each image's boxes and sprite labels.

Four question types, at most one of each per image, in generative form ("question: ... answer:"):

    count      how many things are in the picture?              -> one | two | three | four
    presence   is there a cat in the picture?                   -> yes | no (half each, by a coin)
    relation   where is the cat relative to the rose?           -> left | right | above | below | in front | behind
    identity   what is the biggest thing in the picture?        -> the sprite's name ("red apple")

Relations use the captions' own rule (captions.relation: front/behind when boxes overlap, else
the dominant axis between centres), so questions and captions never disagree. Everything is a
pure function of (records, seed): the same split gives the same questions in any process.
Absent sprites for "no" answers are drawn from the sprites that occur in the given records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .captions import Entity, lexicon, relation
from .english import NUMBER_WORDS, count_phrase
from .sprites import SpriteAtlas

QUESTION_TYPES = ("count", "presence", "relation", "identity")
RELATION_ANSWERS = {
    "left": "left",
    "right": "right",
    "above": "above",
    "below": "below",
    "front": "in front",
    "behind": "behind",
}


@dataclass(frozen=True)
class Question:
    record: int  # index of the image's record in the list the questions were made from
    qtype: str
    question: str
    answer: str

    @property
    def prompt(self) -> str:
        """What the model is given; it must continue with the answer."""
        return f"question: {self.question} answer:"

    @property
    def text(self) -> str:
        """Prompt and answer: the training text."""
        return f"{self.prompt} {self.answer}"


def entities(boxes: Sequence[Sequence[float]], labels: Sequence[int]) -> list[Entity]:
    """Instances grouped by sprite (boxes are in drawing order), largest total box area first."""
    groups: dict[int, list[int]] = {}
    for i, sid in enumerate(labels):
        groups.setdefault(int(sid), []).append(i)
    out = []
    for sid, idx in groups.items():
        b = np.array([boxes[i] for i in idx], dtype=np.float64)
        center = ((b[:, 0] + b[:, 2]) / 2).mean(), ((b[:, 1] + b[:, 3]) / 2).mean()
        area = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum())
        union = (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max()))
        out.append(Entity(sid, tuple(idx), (float(center[0]), float(center[1])), union, area, None, max(idx)))
    return sorted(out, key=lambda e: (-e.area, e.indices[0]))


def questions_for_image(
    record_index: int,
    image_id: int,
    boxes: Sequence[Sequence[float]],
    labels: Sequence[int],
    names: Sequence[str],
    pool: Sequence[int],
    seed: int = 0,
) -> list[Question]:
    """The questions of one image. `names[sprite_id]` is a sprite's name; `pool` the sprite ids to
    draw absent ones from."""
    if not labels:
        return []
    rng = np.random.default_rng(np.random.SeedSequence([seed, int(image_id), 0x5A]))
    ents = entities(boxes, labels)
    name = lambda e: names[e.sprite_id]
    q = lambda t, question, answer: Question(record_index, t, question, answer)
    out = [q("count", "how many things are in the picture?", NUMBER_WORDS.get(len(labels), str(len(labels))))]
    present = {e.sprite_id for e in ents}
    absent = [s for s in pool if s not in present]
    if rng.random() < 0.5 or not absent:
        e = ents[int(rng.integers(len(ents)))]
        out.append(q("presence", f"is there {count_phrase(1, name(e))} in the picture?", "yes"))
    else:
        sid = absent[int(rng.integers(len(absent)))]
        out.append(q("presence", f"is there {count_phrase(1, names[sid])} in the picture?", "no"))
    if len(ents) >= 2:
        i, j = rng.choice(len(ents), size=2, replace=False)
        a, b = ents[int(i)], ents[int(j)]
        answer = RELATION_ANSWERS[relation(a, b)]
        out.append(q("relation", f"where is the {name(a)} relative to the {name(b)}?", answer))
    out.append(q("identity", "what is the biggest thing in the picture?", name(ents[0])))
    return out


def make_questions(records: Sequence, seed: int = 0, atlas: SpriteAtlas | None = None) -> list[Question]:
    """Questions for every record that has boxes and labels (Karpathy records of emoji-scenes), or
    the records' own questions when they carry them (a video build's qa.json, data/video.py)."""
    if records and "questions" in records[0].extra:
        return [Question(ri, q["type"], q["question"], q["answer"]) for ri, r in enumerate(records)
                for q in r.extra.get("questions", [])]  # fmt: skip
    names = [w.name.lower() for w in lexicon(atlas or SpriteAtlas.load())]
    pool = sorted({int(s) for r in records for s in (r.labels or [])})
    out: list[Question] = []
    for ri, r in enumerate(records):
        if r.labels and r.boxes:
            out += questions_for_image(ri, r.image_id, r.boxes, r.labels, names, pool, seed)
    if not out:
        raise ValueError("no VQA questions: the records have no boxes/labels (an emoji-scenes split is needed)")
    return out
