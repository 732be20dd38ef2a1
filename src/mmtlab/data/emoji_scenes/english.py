"""Just enough English morphology for generated captions: articles, plurals, number words, lists."""

from __future__ import annotations

import re

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "person": "people",
    "child": "children",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "leaf": "leaves",
    "knife": "knives",
    "wolf": "wolves",
    "loaf": "loaves",
    "shelf": "shelves",
    "calf": "calves",
    "elf": "elves",
    "scarf": "scarves",
    "half": "halves",
    "ox": "oxen",
    "die": "dice",
    "cactus": "cacti",
    "octopus": "octopuses",
    "hippopotamus": "hippopotamuses",
    "rhinoceros": "rhinoceroses",
    "tomato": "tomatoes",
    "potato": "potatoes",
    "mango": "mangoes",
    "volcano": "volcanoes",
    "hero": "heroes",
    "domino": "dominoes",
    "genie": "genies",
    "zombie": "zombies",
    "bus": "buses",
    "trolleybus": "trolleybuses",
    "minibus": "minibuses",
    "compass": "compasses",
    "abacus": "abacuses",
    "lotus": "lotuses",
    "hibiscus": "hibiscuses",
    "dress": "dresses",
    "kiss": "kisses",
}
# Nouns with the same singular and plural form ("a fish", "two fish").
SAME_FORM_NOUNS = {
    "fish",
    "sheep",
    "deer",
    "bison",
    "moose",
    "shrimp",
    "squid",
    "tennis",
    "customs",
    "aries",
    "taurus",
    "sagittarius",
    "aquarius",
    "pisces",
    "ophiuchus",
    "gemini",
    "cancer",
    "leo",
    "virgo",
    "libra",
    "scorpio",
    "capricorn",
    "claus",
    "fleur-de-lis",
    "news",
    "plus",
    "minus",
    "biceps",
}
# Names that are already plural ("beans", "folded hands"): "some beans", "two beans".
PLURAL_FORM_NOUNS = {
    "beans",
    "bubbles",
    "eyes",
    "lungs",
    "grapes",
    "cherries",
    "blueberries",
    "peanuts",
    "pancakes",
    "fries",
    "houses",
    "fireworks",
    "sparkles",
    "dolls",
    "tickets",
    "cards",
    "arts",
    "clothes",
    "bags",
    "shoes",
    "beads",
    "notes",
    "knobs",
    "frames",
    "books",
    "tabs",
    "dividers",
    "paperclips",
    "swords",
    "chains",
    "bicycles",
    "pedestrians",
    "phones",
    "arrows",
    "bars",
    "numbers",
    "symbols",
    "letters",
    "flags",
    "hearts",
    "points",
    "droplets",
    "fingers",
    "horns",
    "hands",
    "footprints",
    "prints",
    "ears",
    "weights",
    "stars",
    "springs",
    "mountains",
    "drops",
    "people",
    "men",
    "women",
    "crossbones",
    "meridians",
    "americas",
    "wings",
    "tears",
    "eggs",
    "mugs",
    "clouds",
    "dumplings",
    "leaves",
}
# Plural-form names for one object: "a pair of glasses", "two pairs of glasses".
PAIR_NOUNS = {
    "glasses",
    "sunglasses",
    "goggles",
    "jeans",
    "gloves",
    "socks",
    "briefs",
    "shorts",
    "scissors",
    "skis",
    "chopsticks",
    "pants",
    "trousers",
    "binoculars",
}
INVARIANT_NOUNS = SAME_FORM_NOUNS | PLURAL_FORM_NOUNS | PAIR_NOUNS
# A name's head noun is the word before the first of these (e.g. "face WITH tears of joy").
_HEAD_BREAKERS = {"with", "in", "of", "on", "for", "over", "and", "from", "at", "by", "without", "under"}
_ACRONYM_AN = set("AEFHILMNORSX")  # letters whose spoken name starts with a vowel sound


def article(phrase: str) -> str:
    """ "a" or "an" for the phrase that follows."""
    word = phrase.split()[0].strip("“”\"'") if phrase.split() else ""
    if not word:
        return "a"
    if len(word) > 1 and word.isupper():  # acronyms are spelt out: "an ATM sign", "a UFO"
        return "an" if word[0] in _ACRONYM_AN and not word.startswith("U") else "a"
    w = word.lower()
    if re.match(r"(uni|use|usu|eu|one|once|ufo|u-)", w):
        return "a"
    if re.match(r"(hour|honest|honou?r|heir|x-)", w):  # "an x-ray": the letter's name, "ex"
        return "an"
    if w[0].isdigit():
        return "an" if w[0] == "8" or w.startswith(("11", "18")) else "a"
    return "an" if w[0] in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


def pluralize_word(word: str) -> str:
    low = word.lower()
    if low in INVARIANT_NOUNS:
        return word
    if low in IRREGULAR_PLURALS:
        plural = IRREGULAR_PLURALS[low]
        return plural.capitalize() if word[:1].isupper() else plural
    if re.search(r"(s|x|z|ch|sh)$", low):
        return word + "es"
    if re.search(r"[^aeiou]y$", low):
        return word[:-1] + "ies"
    return word + "s"


def head_index(words: list[str]) -> int:
    """Position of a noun phrase's head noun: the word before the first preposition or participle
    ("face WITH tears", "person LIFTING weights"), else the last word."""
    for i, w in enumerate(words[1:], start=1):
        if w.lower() in _HEAD_BREAKERS or (w.endswith("ing") and len(w) > 4):
            return i - 1
    return len(words) - 1


def pluralize(noun_phrase: str) -> str:
    """Plural of a noun phrase: pluralises its head ("face with tears of joy" -> "faces with tears of
    joy", "person lifting weights" -> "people lifting weights", "red apple" -> "red apples")."""
    words = noun_phrase.split(" ")
    head = head_index(words)
    if words[head].lower() in INVARIANT_NOUNS or any(w.lower() in {"people", "men", "women"} for w in words):
        return noun_phrase
    words[head] = pluralize_word(words[head])
    return " ".join(words)


def count_phrase(count: int, noun: str, *, singular_det: str | None = None) -> str:
    """ "a cat", "two cats", "some beans", "a pair of glasses"; `singular_det` replaces "a/an"."""
    words = noun.split(" ")
    head = words[head_index(words)].lower()
    number = NUMBER_WORDS.get(count, str(count))
    if head in PAIR_NOUNS:
        return f"a pair of {noun}" if count == 1 else f"{number} pairs of {noun}"
    if count == 1:
        if head in PLURAL_FORM_NOUNS:
            return f"some {noun}"
        return f"{singular_det} {noun}" if singular_det else with_article(noun)
    return f"{number} {pluralize(noun)}"


def is_plural(count: int, noun: str) -> bool:
    """Grammatical number of count_phrase(count, noun): "some beans" is plural, "a pair of glasses" not."""
    words = noun.split(" ")
    head = words[head_index(words)].lower()
    return count > 1 or head in PLURAL_FORM_NOUNS


def is_are(plural: bool) -> str:
    return "are" if plural else "is"
