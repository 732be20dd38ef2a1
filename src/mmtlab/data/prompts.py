"""Prompt templates for class names: CLIP's prompt ensembling (Radford et al. 2021, Sec. 3.1.4).

A class is embedded as the renormalised mean of its name's embeddings in several templates; zero-shot
classification (eval/zeroshot.py) and open-vocabulary detection (models/detector.py) share them.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmtlab.data.emoji_scenes.english import with_article

# {} is the sprite name with its article ("a cat"). A mix of the corpus styles the models are
# trained on (descriptive, alt-text), as CLIP's 80 ImageNet templates mix phrasings.
TEMPLATES = (
    "a picture of {}.",
    "an image showing {}.",
    "a drawing of {}.",
    "a colorful icon of {}.",
    "{} on a plain background.",
    "{} emoji",
)


def prompts(names: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """len(names) * len(templates) texts, name-major."""
    return [t.format(with_article(n)) for n in names for t in templates]
