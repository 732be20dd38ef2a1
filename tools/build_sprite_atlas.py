#!/usr/bin/env python3
"""Build the emoji-scenes sprite atlas from Noto Color Emoji + Unicode CLDR English annotations.

Run once by a maintainer; the output (atlas.png, sprites.json, LICENSES.md) is committed so that users
and CI never need the Debian packages:

    python tools/build_sprite_atlas.py [--out src/mmtlab/data/emoji_scenes/assets] [--size 40]

What it does:
1. Makes sure the Debian packages `fonts-noto-color-emoji` and `unicode-cldr-core` are installed
   (apt-get, only if the files are missing).
2. Reads every annotated character sequence from CLDR `common/annotations/en.xml`: the `type="tts"`
   entry is the name, the other entry the keyword list.
3. Renders each with the colour font (CBDT bitmaps at their native 109 px size) and keeps only real
   emoji: ASCII and skin-tone/hair "component" glyphs are dropped by rule, sequences with no colour
   glyph render as nothing (this font has no tofu) and are dropped, and a multi-codepoint sequence is
   kept only if the shaper turned it into ONE glyph (ZWJ ligature) rather than several side by side.
4. Crops each glyph to its alpha bounding box, pads it to a square, downsamples in premultiplied
   alpha (so transparent pixels' colours never bleed into edges) and packs all sprites into one grid.

Categories come from the CLDR/Unicode emoji ORDER: en.xml lists emoji in the Unicode emoji ordering,
where groups are contiguous, so a short table of "first emoji of each group" assigns every emoji its
group. CLDR 41 appends the Emoji 14.0 additions as a block out of order; those 37 get an explicit table.

The output is deterministic: running the tool twice on the same machine gives identical bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from mmtlab.data.emoji_scenes.palette import COLOR_NAMES, nearest_color_index

FONT_PATH = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
CLDR_PATH = Path("/usr/share/unicode/cldr/common/annotations/en.xml")
DEBIAN_PACKAGES = ("fonts-noto-color-emoji", "unicode-cldr-core")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/mmtlab/data/emoji_scenes/assets"

FONT_SIZE = 109  # the only size the CBDT colour strikes exist at
CANVAS = 200  # render canvas; a glyph is ~136 px wide, so a larger bbox means several glyphs
ORIGIN = 24
COLUMNS = 40
ALPHA_MIN = 8  # pixels fainter than this are anti-aliasing dust, not part of the glyph

# First emoji of each run in CLDR's emoji ordering -> our coarse category. None = not an emoji
# (CLDR also annotates punctuation, arrows, maths and currency signs) or a component (skin tones,
# hair styles), which are dropped.
ORDER_ANCHORS: list[tuple[str, str | None]] = [
    ("{", None),  # punctuation, arrows, maths ... (first entry of en.xml)
    ("\U0001f600", "smileys"),  # grinning face: Smileys & Emotion
    ("\U0001f48b", "symbols"),  # kiss mark: the "emotion" subgroup (hearts, 💯, 💥, 💬 ...)
    ("\U0001f44b", "people"),  # waving hand: People & Body (hands, body parts, persons)
    ("\U0001f9b0", None),  # red hair: Component
    ("\U0001f435", "animals"),  # monkey face: Animals & Nature, animal-* subgroups
    ("\U0001f490", "plants"),  # bouquet: plant-flower / plant-other
    ("\U0001f347", "food"),  # grapes: Food & Drink
    ("\U0001f30d", "travel"),  # globe: Travel & Places (places, buildings, transport, time)
    ("\U0001f311", "weather"),  # new moon: the sky & weather subgroup
    ("\U0001f383", "activities"),  # jack-o-lantern: Activities (events, sports, games, arts)
    ("\U0001f453", "objects"),  # glasses: Objects
    ("\U0001f3e7", "symbols"),  # ATM sign: Symbols
    ("\U0001f3c1", "symbols"),  # chequered flag: Flags (only a handful in en.xml)
    ("\u00a2", None),  # cent sign: currency signs and superscripts after the flags
]

# CLDR 41 lists the Emoji 14.0 additions in one block before the ordered run; their Unicode groups:
EMOJI_14_CATEGORIES: dict[str, str] = {
    "\U0001f979": "smileys",
    "\U0001fae0": "smileys",
    "\U0001fae1": "smileys",
    "\U0001fae2": "smileys",
    "\U0001fae3": "smileys",
    "\U0001fae4": "smileys",
    "\U0001fae5": "smileys",
    "\U0001f9cc": "people",
    "\U0001fac3": "people",
    "\U0001fac4": "people",
    "\U0001fac5": "people",
    "\U0001fae6": "people",
    "\U0001faf0": "people",
    "\U0001faf1": "people",
    "\U0001faf2": "people",
    "\U0001faf3": "people",
    "\U0001faf4": "people",
    "\U0001faf5": "people",
    "\U0001faf6": "people",
    "\U0001fab8": "animals",  # coral
    "\U0001fab7": "plants",
    "\U0001fab9": "plants",
    "\U0001faba": "plants",  # lotus, nests
    "\U0001fad7": "food",
    "\U0001fad8": "food",
    "\U0001fad9": "food",  # pouring liquid, beans, jar
    "\U0001f6dd": "travel",
    "\U0001f6de": "travel",
    "\U0001f6df": "travel",  # slide, wheel, ring buoy
    "\U0001faa9": "activities",
    "\U0001faac": "activities",  # mirror ball, hamsa (next to nazar amulet)
    "\U0001fa7b": "objects",
    "\U0001fa7c": "objects",
    "\U0001faaa": "objects",
    "\U0001faab": "objects",
    "\U0001fae7": "objects",  # x-ray, crutch, ID card, low battery, bubbles
    "\U0001f7f0": "symbols",  # heavy equals sign
}


@dataclass
class Annotation:
    char: str
    name: str
    keywords: list[str]
    category: str | None


def ensure_debian_packages() -> None:
    if FONT_PATH.exists() and CLDR_PATH.exists():
        return
    sudo: list[str] = []
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            sys.exit(f"missing {FONT_PATH} or {CLDR_PATH}; as root run: apt-get install -y {' '.join(DEBIAN_PACKAGES)}")
        sudo = ["sudo"]
    print("installing", " ".join(DEBIAN_PACKAGES), file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update"], check=True)
    subprocess.run([*sudo, "apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES], check=True)


def debian_version(package: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def read_annotations(path: Path) -> list[Annotation]:
    """CLDR annotations in file order, with the category from the emoji ordering."""
    root = ET.parse(path).getroot()
    names: dict[str, str] = {}
    keywords: dict[str, str] = {}
    order: list[str] = []
    for node in root.iter("annotation"):
        cp = node.get("cp") or ""
        text = (node.text or "").strip()
        if node.get("type") == "tts":
            names[cp] = text
        else:
            keywords[cp] = text
            order.append(cp)
    anchors = dict(ORDER_ANCHORS)
    category: str | None = None
    out = []
    for cp in order:
        if cp in anchors:
            category = anchors[cp]
        cat = EMOJI_14_CATEGORIES.get(cp, category)
        name = names.get(cp, "")
        kws = []
        for kw in keywords.get(cp, "").split("|"):
            kw = kw.strip().lower()
            if kw and kw != name.lower() and kw not in kws:
                kws.append(kw)
        out.append(Annotation(cp, name, kws, cat))
    return out


def render_glyph(font: ImageFont.FreeTypeFont, text: str) -> Image.Image | None:
    """Tight RGBA crop of `text` as rendered by the colour font, or None if it is not one colour glyph."""
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((ORIGIN, ORIGIN), text, font=font, embedded_color=True)
    alpha = canvas.getchannel("A").point(lambda a: 255 if a >= ALPHA_MIN else 0)
    bbox = alpha.getbbox()
    if bbox is None:  # no colour glyph: Noto Color Emoji's .notdef is empty
        return None
    x1, y1, x2, y2 = bbox
    # Several glyphs side by side (an unshaped ZWJ sequence) run past one glyph's ~136 px cell.
    if x2 - x1 > 150 or font.getlength(text) > 1.1 * font.getlength("\U0001f600"):
        return None
    if x1 == 0 or y1 == 0 or x2 == CANVAS or y2 == CANVAS:
        raise RuntimeError(f"glyph {text!r} touches the render canvas edge; enlarge CANVAS")
    return canvas.crop(bbox)


def to_sprite(glyph: Image.Image, size: int) -> Image.Image:
    """Pad to a centred square, then downsample with premultiplied alpha (Pillow's RGBa mode)."""
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    square.paste(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    small = square.convert("RGBa").resize((size, size), Image.Resampling.LANCZOS).convert("RGBA")
    arr = np.array(small)
    arr[arr[..., 3] == 0] = 0  # canonical fully-transparent pixels: smaller PNG, no stray colour
    return Image.fromarray(arr, "RGBA")


def dominant_color(sprite: Image.Image) -> str:
    """The palette name most opaque pixels are nearest to.

    A vote rather than the name of the mean colour: the mean of a red apple with a green leaf and a
    highlight drifts towards brown, while the vote still says red.
    """
    arr = np.asarray(sprite)
    opaque = arr[arr[..., 3] >= 128][:, :3]
    if len(opaque) == 0:
        opaque = arr[arr[..., 3] > 0][:, :3]
    votes = np.bincount(nearest_color_index(opaque), minlength=len(COLOR_NAMES))
    return COLOR_NAMES[int(votes.argmax())]


def skip_reason(ann: Annotation) -> str | None:
    if ann.category is None:
        return "not an emoji (punctuation/maths/currency) or a component"
    if all(ord(c) < 0x80 for c in ann.char):
        return "ascii"
    if any(0x1F1E6 <= ord(c) <= 0x1F1FF for c in ann.char):
        return "regional indicator"
    if "\u20e3" in ann.char:
        return "keycap"
    if not ann.name:
        return "no tts name"
    return None


def build(out: Path, size: int) -> dict:
    ensure_debian_packages()
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    font = ImageFont.truetype(str(FONT_PATH), FONT_SIZE, layout_engine=engine)
    sprites: list[dict] = []
    images: list[Image.Image] = []
    skipped: dict[str, int] = {}
    for ann in read_annotations(CLDR_PATH):
        reason = skip_reason(ann)
        glyph = None if reason else render_glyph(font, ann.char)
        if reason is None and glyph is None:
            reason = "no single colour glyph in the font"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        sprite = to_sprite(glyph, size)
        sprites.append(
            {
                "id": len(sprites),
                "char": ann.char,
                "codepoints": [f"{ord(c):04X}" for c in ann.char],
                "name": ann.name,
                "keywords": ann.keywords,
                "category": ann.category,
                "color": dominant_color(sprite),
                "unicode_name": " + ".join(unicodedata.name(c, "?") for c in ann.char),
            }
        )
        images.append(sprite)

    rows = -(-len(images) // COLUMNS)
    atlas = Image.new("RGBA", (COLUMNS * size, rows * size), (0, 0, 0, 0))
    for i, im in enumerate(images):
        atlas.paste(im, ((i % COLUMNS) * size, (i // COLUMNS) * size))

    out.mkdir(parents=True, exist_ok=True)
    atlas.save(out / "atlas.png", optimize=True)
    meta = {
        "format_version": 1,
        "sprite_size": size,
        "columns": COLUMNS,
        "count": len(sprites),
        "source": {
            "font": f"Noto Color Emoji (Debian fonts-noto-color-emoji {debian_version(DEBIAN_PACKAGES[0])})",
            "cldr": f"CLDR common/annotations/en.xml (Debian unicode-cldr-core {debian_version(DEBIAN_PACKAGES[1])})",
            "layout_engine": "raqm" if engine == ImageFont.Layout.RAQM else "basic",
            "render_size": FONT_SIZE,
        },
        "categories": sorted({s["category"] for s in sprites}),
        "sprites": sprites,
    }
    # One sprite per line: readable diffs when the font or CLDR version changes.
    lines = [json.dumps(s, ensure_ascii=False) for s in sprites]
    head = {k: v for k, v in meta.items() if k != "sprites"}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ',\n "sprites": [\n  '
    text += ",\n  ".join(lines) + "\n ]\n}\n"
    (out / "sprites.json").write_text(text, encoding="utf-8")
    return {
        "rendered": len(sprites),
        "skipped": skipped,
        "atlas_bytes": (out / "atlas.png").stat().st_size,
        "json_bytes": (out / "sprites.json").stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--size", type=int, default=40, help="sprite side in pixels (48 would exceed a 4 MiB atlas)")
    args = parser.parse_args()
    report = build(args.out, args.size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
