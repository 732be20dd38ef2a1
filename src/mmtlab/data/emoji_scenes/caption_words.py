"""The wording of emoji-scenes captions: every word list, template and probability the caption
writers (captions.py) pick from. Change the corpus' language here; the code only samples."""

from __future__ import annotations

SIZE_ADJECTIVES = {"small": ("small", "little", "tiny"), "large": ("big", "large", "huge"), "medium": ()}
SIZE_WORDS = {"small", "little", "tiny", "big", "large", "huge", "medium"}  # never "a big small square"
NAME_PROB = 0.75  # otherwise a keyword synonym ("fruit", "pet"), when the sprite has one
COLOR_ADJ_PROB = 0.15
SIZE_ADJ_PROB = 0.3

# Keywords that are usable as nouns for a sprite ("a fruit", "a pet") when CLDR lists them. Keywords
# in general mix nouns, adjectives and verbs ("happy", "resist"), and only nouns can replace a name.
_HYPERNYM_WORDS = """
animal pet bird insect bug fish mammal reptile fruit vegetable food drink beverage dessert sweet
flower plant tree vehicle car boat ship train aircraft airplane building house tool weapon ball
game toy instrument hat shoe bag money coin heart star sign symbol arrow clock watch book face hand
person monster creature ghost robot alien device phone computer camera light lamp moon sun cloud
medal trophy cup glass bottle bowl plate box gift present container furniture chair bed key lock
cat dog horse cow pig sheep goat mouse rabbit bear monkey snake dragon dinosaur whale dolphin shark
apple banana grape lemon orange pear peach cherry strawberry melon pizza burger sandwich cake cookie
candy bread cheese egg noodles rice soup salad taco sushi coffee tea beer wine juice milk guitar
drum piano trumpet violin flag umbrella balloon rocket bicycle bike bus truck taxi tractor ambulance
castle church tent mountain volcano island tower bridge planet leaf rose tulip sunflower cactus
mushroom pumpkin carrot corn potato tomato pepper baby boy girl man woman child kid king queen
prince princess wizard fairy mermaid vampire zombie genie elf superhero doctor teacher farmer cook
"""
HYPERNYMS = frozenset(_HYPERNYM_WORDS.split())

BACKGROUND_NOUNS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    # noun phrase template over the background colours -> prepositions that fit it
    "solid": [
        ("a {0} background", ("on", "against", "in front of")),
        ("a plain {0} background", ("on", "against")),
        ("a {0} backdrop", ("against", "in front of")),
        ("a {0} wall", ("against", "in front of")),
    ],
    "gradient": [
        ("a {0} to {1} gradient", ("on", "against", "over")),
        ("a background fading from {0} to {1}", ("on", "against")),
        ("a {0} and {1} gradient background", ("on", "against")),
    ],
    "striped": [
        ("a striped {0} and {1} background", ("on", "against")),
        ("a striped {0} and {1} wall", ("against", "in front of")),
        ("{1} stripes on {0}", ("over", "against")),
    ],
    "dotted": [
        ("a dotted {0} and {1} background", ("on", "against")),
        ("a {0} background with {1} dots", ("on", "against")),
        ("a {0} and {1} polka dot wall", ("against", "in front of")),
    ],
    "checkered": [
        ("a checkered {0} and {1} background", ("on", "against")),
        ("a {0} and {1} checkerboard", ("on", "over")),
        ("a checkered {0} and {1} floor", ("on",)),
    ],
}

RELATIONS = {
    "left": ("to the left of", "left of", "on the left of", "next to", "beside"),
    "right": ("to the right of", "right of", "on the right of", "next to", "beside"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath"),
    "front": ("in front of", "partly covering", "overlapping"),
    "behind": ("behind", "partly hidden behind"),
}

# (minimum number of distinct sprites, template). Slots: all/salient/a/b are grounded noun phrases.
DESCRIPTIVE_TEMPLATES: list[tuple[int, str]] = [
    (1, "{all} {bgp}."),
    (1, "{there_all} {all} {bgp}."),
    (1, "a picture of {all}."),
    (1, "an image showing {salient} {bgp}."),
    (1, "{bg} with {all} on it."),
    (1, "{all_sized} {bgp}."),
    (1, "{all} can be seen {bgp}."),
    (1, "{bgp}, {all}."),
    (1, "a drawing of {salient}."),
    (1, "{salient} {verb_salient} {bgp}."),
    (1, "a colorful icon of {salient}."),
    (2, "{a} {rel} {b}."),
    (2, "{a} {be_a} {rel} {b} {bgp}."),
    (2, "{a} {rel} {b} {bgp}."),
    (2, "{a_sized} and {b_sized} {bgp}."),
    (2, "{b} with {a} {rel} it."),
]
VERBS = {1: ("sits", "floats", "appears", "is shown"), 2: ("sit", "float", "appear", "are shown")}

ALT_PREFIXES = (
    "",
    "",
    "stock photo of",
    "free vector illustration of",
    "illustration of",
    "cartoon",
    "vector image of",
    "clipart",
    "cute",
    "royalty free",
    "download",
    "icon of",
    "emoji",
)
ALT_SUFFIXES = (
    "",
    "",
    "stock photo",
    "hd wallpaper",
    "clipart",
    "vector illustration",
    "png",
    "free download",
    "icon",
    "emoji",
    "royalty free stock image",
    "cartoon style",
    "flat design",
    "for kids",
    "sticker",
)
ALT_BACKGROUNDS = {
    "solid": ("on {0} background", "{0} background", "with {0} background", "isolated on {0}"),
    "gradient": ("on {0} {1} gradient background", "{0} and {1} gradient", "gradient background"),
    "pattern": ("on {p} background", "{p} {0} {1} pattern", "{p} pattern background"),
}
ALT_SEPARATORS = (" ", " ", ", ", " - ", " | ")
ALT_CASES = {"lower": 0.45, "title": 0.3, "sentence": 0.25}
ALT_MENTION_PROB = 0.7  # each further sprite is mentioned with this probability (partial mentions)
ALT_BACKGROUND_PROB = 0.45

NARRATIVE_OPENERS = (
    "in this image i can see",
    "in this picture we can see",
    "in this image we can see",
    "this image consists of",
    "here we can see",
    "in this picture i can see",
    "uh in this image i can see",
)
NARRATIVE_CONNECTORS = (
    "and there {be}",
    "and i can see",
    "and we can see",
    "and uh there {be}",
    "and also there {be}",
    "beside that there {be}",
    "and here i can see",
    "and um there {be}",
)
NARRATIVE_BACKGROUNDS = {
    "solid": (
        "and in the background it is {0} in color",
        "and the background is {0}",
        "and in the background we can see {0} color",
        "and uh the background is {0} in color",
    ),
    "gradient": (
        "and the background is {0} and {1} in color",
        "and in the background it is {0} and {1}",
        "and the background is like {0} going to {1}",
    ),
    "pattern": (
        "and in the background there is a {p} pattern in {0} and {1} color",
        "and the background is {p} with {0} and {1} colors",
        "and the background is {0} and {1} {p}",
    ),
}
DISFLUENCIES = ("uh", "um", "uh", "like")  # said right before a noun phrase
HEDGES = ("i think", "so", "okay", "uh")  # said before a connector ("... so and there is ...")
DISFLUENCY_PROB = 0.2
