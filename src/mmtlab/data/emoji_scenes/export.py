"""What a build writes besides the Karpathy JSON and the shards: the Flickr30k Entities export
of the grounded splits, and a preview sheet of scenes with their captions."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..formats import flickr30k_entities
from .sprites import SpriteAtlas


def export_flickr30k_entities(out_dir: Path, images, categories: list[str], size: tuple[int, int] | None = None) -> int:
    """Write the grounding of `images` (dicts with filename, captions, phrases, boxes, labels, and
    width/height unless every image is `size`) in Flickr30k Entities format; the phrase type is
    the sprite's category. Returns the number of images written."""
    n = 0
    for img in images:
        width, height = size or (img["width"], img["height"])
        phrases = img.get("phrases") or [[] for _ in img["captions"]]
        boxes, labels = img["boxes"] or [], img["labels"]
        types = [categories[k] for k in labels] if labels else ["other"] * len(boxes)  # Flickr30k's catch-all
        flickr30k_entities.write_image(
            out_dir,
            Path(img["filename"]).stem,
            filename=img["filename"],
            width=width,
            height=height,
            captions=img["captions"],
            phrases=phrases,
            boxes=boxes,
            types=types,
        )
        n += 1
    return n


def write_preview(root: Path, atlas: SpriteAtlas, image_size: int, entries: list[dict], cols: int = 4) -> None:
    """A grid of val scenes, upscaled, with boxes and the first caption: a quick visual check."""
    if not entries:
        return
    scale = max(1, 192 // image_size)
    cell, text_h = image_size * scale, 64
    rows = -(-len(entries) // cols)
    sheet = Image.new("RGB", (cols * (cell + 8) + 8, rows * (cell + text_h + 8) + 8), "white")
    font = ImageFont.load_default(size=11)
    palette = [(255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 255, 0)]
    for k, e in enumerate(entries):
        im = Image.open(root / "images" / e["filepath"] / e["filename"]).convert("RGB")
        im = im.resize((cell, cell), Image.Resampling.NEAREST)
        draw = ImageDraw.Draw(im)
        for j, (x1, y1, x2, y2) in enumerate(e["boxes"]):
            draw.rectangle((x1 * scale, y1 * scale, x2 * scale - 1, y2 * scale - 1), outline=palette[j % 4], width=2)
        x, y = 8 + (k % cols) * (cell + 8), 8 + (k // cols) * (cell + text_h + 8)
        sheet.paste(im, (x, y))
        text = "\n".join(textwrap.wrap(e["captions"][0], width=cell // 6)[:5])
        ImageDraw.Draw(sheet).multiline_text((x, y + cell + 3), text, fill="black", font=font, spacing=1)
    sheet.save(root / "preview.png", optimize=True)
