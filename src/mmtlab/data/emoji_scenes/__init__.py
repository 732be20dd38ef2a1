"""emoji-scenes: mmtlab's embedded vision-language dataset.

Scenes of 1-4 Noto Color Emoji sprites on described backgrounds (solid colours, gradients, stripes,
dots, checks), each with exact boxes, captioned in three styles that mimic real corpora (COCO/Flickr
`descriptive`, Conceptual-Captions-like `alt_text`, Localized-Narratives-like `narrative`) and with
every sprite-mentioning noun phrase grounded to its box(es). Words come from Unicode CLDR names and
keywords. Everything is deterministic given (seed, split, index) and needs no download: the sprite
atlas is shipped in `assets/` (see assets/LICENSES.md; rebuilt by tools/build_sprite_atlas.py).

    from mmtlab.data.emoji_scenes import SpriteAtlas, generate_scene, caption_scene, build_emoji_scenes
    scene = generate_scene(seed=0, split="val", index=3)
    captions = caption_scene(scene, "descriptive")           # 5 Caption(text, phrases, style)
    build_emoji_scenes("data/emoji-scenes", size=20000)      # Karpathy JSON + images + WebDataset shards
"""

from .build import build_emoji_scenes
from .captions import STYLES, Caption, caption_scene
from .grounded_text import Phrase
from .scenes import Background, PlacedSprite, Scene, generate_scene
from .sprites import SpriteAtlas

__all__ = [
    "STYLES",
    "Background",
    "Caption",
    "Phrase",
    "PlacedSprite",
    "Scene",
    "SpriteAtlas",
    "build_emoji_scenes",
    "caption_scene",
    "generate_scene",
]
