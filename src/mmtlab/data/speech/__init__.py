"""Spoken emoji-scenes: espeak-ng renderings of captions and keywords, shipped and generated."""

from mmtlab.data.speech.spoken import SHIPPED, SpokenSet, SpokenSetError, build_spoken_set, load_spoken

__all__ = ["SHIPPED", "SpokenSet", "SpokenSetError", "build_spoken_set", "load_spoken"]
