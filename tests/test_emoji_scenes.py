"""emoji-scenes: atlas, scene generator, grounded captions and the dataset build."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmtlab.data.emoji_scenes import (
    STYLES,
    SpriteAtlas,
    build_emoji_scenes,
    caption_scene,
    generate_scene,
)
from mmtlab.data.emoji_scenes import build as build_module
from mmtlab.data.emoji_scenes.captions import entities_of, lexicon
from mmtlab.data.emoji_scenes.english import NUMBER_WORDS, article, count_phrase, is_plural, pluralize
from mmtlab.data.emoji_scenes.palette import COLORS
from mmtlab.data.emoji_scenes.scenes import ALPHA_VISIBLE, render_sprite

SMALL = dict(size=40, eval_size=20, heldout_size=20, shard_size=16, progress=False)


@pytest.fixture(scope="module")
def atlas() -> SpriteAtlas:
    return SpriteAtlas.load()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("es") / "emoji-scenes"
    build_emoji_scenes(out, noise=0.25, **SMALL)
    return out


def karpathy(out: Path) -> list[dict]:
    return json.loads((out / "dataset_emoji_scenes.json").read_text())["images"]


# ------------------------------------------------------------------------------------------ atlas


def test_atlas_metadata(atlas):
    assert 1400 <= len(atlas) <= 1700
    assert len(atlas.names) == len(atlas.keywords) == len(atlas.categories) == len(atlas)
    assert "grinning face" in atlas.names and "red apple" in atlas.names
    assert set(atlas.categories) >= {
        "smileys",
        "people",
        "animals",
        "plants",
        "food",
        "travel",
        "objects",
        "symbols",
        "activities",
    }
    assert set(atlas.colors) <= set(COLORS)
    i = atlas.names.index("red apple")
    assert atlas.categories[i] == "food" and atlas.colors[i] == "red" and "fruit" in atlas.keywords[i]
    assert all(name.lower() not in kws for name, kws in zip(atlas.names, atlas.keywords))
    im = atlas.rgba(i)
    assert im.mode == "RGBA" and im.size == (atlas.sprite_size, atlas.sprite_size)
    assert atlas.rgba(i) is im  # cached
    assert np.asarray(im)[..., 3].max() == 255


def test_heldout_is_deterministic_and_stratified(atlas):
    held = atlas.heldout_ids()
    assert held == atlas.heldout_ids(0.1, 0) and held != atlas.heldout_ids(0.1, 1)
    assert abs(len(held) - 0.1 * len(atlas)) < 10
    assert {atlas.categories[i] for i in held} == set(atlas.categories)
    order = atlas.basic_order(exclude=held)
    assert sorted(order) == sorted(set(range(len(atlas))) - set(held))
    assert len({atlas.categories[i] for i in order[:10]}) == 10  # round-robin over categories


# ------------------------------------------------------------------------------------- generator


def test_scene_is_a_pure_function_of_seed_split_index(atlas):
    a = generate_scene(3, "val", 7, atlas=atlas)
    later = [generate_scene(3, "val", i, atlas=atlas) for i in (9, 8, 7)][-1]  # other scenes first
    assert np.array_equal(np.asarray(a.image), np.asarray(later.image))
    assert a.sprites == later.sprites and a.background == later.background
    for style in STYLES:
        assert caption_scene(a, style, atlas=atlas) == caption_scene(later, style, atlas=atlas)
    other_seed = generate_scene(4, "val", 7, atlas=atlas)
    other_split = generate_scene(3, "test", 7, atlas=atlas)
    assert not np.array_equal(np.asarray(a.image), np.asarray(other_seed.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(other_split.image))


@pytest.mark.parametrize("image_size", [64, 96, 128])
def test_boxes_tightly_bound_each_sprites_visible_pixels(atlas, image_size):
    for index in range(60):
        scene = generate_scene(0, "pretrain", index, image_size=image_size, atlas=atlas)
        assert scene.image.size == (image_size, image_size) and scene.image.mode == "RGB"
        assert 1 <= len(scene.sprites) <= 4
        for s in scene.sprites:
            x1, y1, x2, y2 = s.box
            assert 0 <= x1 < x2 <= image_size and 0 <= y1 < y2 <= image_size
            # Re-render the sprite alone on an empty canvas at its placement: same extent.
            _, mask = render_sprite(atlas, s.sprite_id, s.side, s.flipped)
            canvas = np.zeros((image_size, image_size), dtype=bool)
            x, y = s.xy
            sx, sy = max(0, -x), max(0, -y)
            ex, ey = min(s.side, image_size - x), min(s.side, image_size - y)
            canvas[y + sy : y + ey, x + sx : x + ex] = mask[sy:ey, sx:ex]
            rows, cols = np.flatnonzero(canvas.any(1)), np.flatnonzero(canvas.any(0))
            assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == s.box
            assert s.visible >= 0.5
            assert s.size_name in {"small", "medium", "large"}


def test_single_sprite_changes_pixels_only_inside_its_box(atlas):
    """Independent of the renderer: on a solid background, pixels that differ clearly from the
    background colour lie inside the box and reach (nearly) all four box edges."""
    checked = 0
    for index in range(400):
        scene = generate_scene(1, "val", index, atlas=atlas)
        if len(scene.sprites) != 1 or scene.background.kind != "solid":
            continue
        img = np.asarray(scene.image).astype(int)
        diff = np.abs(img - np.array(COLORS[scene.background.colors[0]])).max(-1)
        x1, y1, x2, y2 = scene.sprites[0].box
        outside = diff.copy()
        outside[y1:y2, x1:x2] = 0
        assert outside.max() < 48  # alpha < ALPHA_VISIBLE changes a pixel by < 32 (+ noise)
        ys, xs = np.nonzero(diff >= 24)
        if len(xs):
            assert xs.min() - x1 <= 3 and x2 - 1 - xs.max() <= 3 and ys.min() - y1 <= 3 and y2 - 1 - ys.max() <= 3
        checked += 1
    assert checked >= 30
    assert ALPHA_VISIBLE == 32


def test_repeats_and_backgrounds_vary(atlas):
    scenes = [generate_scene(0, "pretrain", i, atlas=atlas) for i in range(300)]
    assert any(len(set(s.labels)) < len(s.labels) for s in scenes)  # "two cats" happens
    kinds = Counter(s.background.kind for s in scenes)
    assert set(kinds) == {"solid", "gradient", "pattern"}
    assert {s.background.pattern for s in scenes} >= {"striped", "dotted", "checkered"}
    assert Counter(len(s.sprites) for s in scenes).keys() == {1, 2, 3, 4}


# -------------------------------------------------------------------------------------- captions


def _mentions_sprite(text: str, words) -> bool:
    t = text.lower()
    terms = {words.name.lower(), *words.keywords, *words.nouns}
    return any(term in t or pluralize(term) in t for term in terms)


@pytest.mark.parametrize("style", STYLES)
def test_grounding_spans_boxes_and_counts(atlas, style):
    lex = lexicon(atlas)
    for index in range(80):
        scene = generate_scene(0, "val", index, atlas=atlas)
        instances = {sid: [i for i, s in enumerate(scene.sprites) if s.sprite_id == sid] for sid in scene.labels}
        for cap in caption_scene(scene, style, atlas=atlas):
            assert cap.style == style and cap.text.strip() == cap.text and cap.text
            assert cap.phrases, cap.text
            last_end = 0
            for p in cap.phrases:
                assert cap.text[p.start : p.end] == p.text
                assert p.start >= last_end  # ordered, non-overlapping
                last_end = p.end
                assert list(p.box_indices) == instances[p.sprite_id]  # every instance, valid indices
                assert _mentions_sprite(p.text, lex[p.sprite_id]), (p.text, lex[p.sprite_id].name)
                n = len(p.box_indices)
                if style != "alt_text":  # the determiner agrees with the number of boxes
                    first, rest = p.text.lower().split(" ", 1)
                    if rest.startswith("pair"):
                        rest = rest.split(" of ", 1)[1]
                    if n > 1:
                        assert first == NUMBER_WORDS[n], p.text
                    else:
                        assert first == "some" or first == article(rest), p.text


def test_descriptive_gives_five_distinct_captions(atlas):
    for index in range(60):
        scene = generate_scene(2, "test", index, atlas=atlas)
        caps = caption_scene(scene, "descriptive", atlas=atlas)
        assert len(caps) == 5 and len({c.text for c in caps}) == 5
        assert all(c.text[0].isupper() and c.text.endswith(".") for c in caps)
        mentioned = {p.sprite_id for c in caps for p in c.phrases}
        assert mentioned <= set(scene.labels) and entities_of(scene)[0].sprite_id in mentioned


def test_styles_look_different(atlas):
    scene = generate_scene(0, "val", 1, atlas=atlas)
    narrative = caption_scene(scene, "narrative", n=3, atlas=atlas)
    assert all(re.match(r"(uh )?(in this|this image|here)", c.text) for c in narrative)
    assert all(c.text == c.text.lower() for c in narrative)
    alt = [caption_scene(generate_scene(0, "val", i, atlas=atlas), "alt_text", atlas=atlas)[0].text for i in range(40)]
    fillers = ("stock photo", "vector", "clipart", "wallpaper", "icon", "download", "cute", "png", "emoji")
    assert sum(any(f in t.lower() for f in fillers) for t in alt) >= 20


def test_english_helpers():
    assert [article(w) for w in ("apple", "cat", "hourglass", "unicorn", "ATM sign", "UFO", "8-ball", "x-ray")] == [
        "an",
        "a",
        "an",
        "a",
        "an",
        "a",
        "an",
        "an",
    ]
    assert pluralize("red apple") == "red apples"
    assert pluralize("face with tears of joy") == "faces with tears of joy"
    assert pluralize("person lifting weights") == "people lifting weights"
    assert pluralize("grinning cat") == "grinning cats" and pluralize("fox") == "foxes"
    assert pluralize("butterfly") == "butterflies" and pluralize("sheep") == "sheep"
    assert count_phrase(1, "orange heart") == "an orange heart" and count_phrase(3, "fish") == "three fish"
    assert count_phrase(1, "folded hands") == "some folded hands" and is_plural(1, "folded hands")
    assert not is_plural(1, "glasses") and is_plural(2, "cat") and not is_plural(1, "cat")
    assert count_phrase(1, "glasses") == "a pair of glasses" and count_phrase(2, "goggles") == "two pairs of goggles"


# ----------------------------------------------------------------------------------------- build


def test_build_layout_and_counts(built):
    meta = json.loads((built / "meta.json").read_text())
    assert meta["format_version"] == build_module.FORMAT_VERSION
    assert {s: c["images"] for s, c in meta["counts"].items() if s in build_module.SPLITS} == {
        "pretrain": 40,
        "val": 20,
        "test": 20,
        "heldout": 20,
    }
    assert (built / "preview.png").stat().st_size > 0
    assert len(list((built / "images" / "val").glob("val_*.png"))) == 20
    assert sorted(p.name for p in (built / "shards").glob("pretrain-*.tar")) == [
        "pretrain-000000.tar",
        "pretrain-000001.tar",
        "pretrain-000002.tar",
    ]
    images = karpathy(built)
    by_split = Counter(im["split"] for im in images)
    assert by_split == {"pretrain": 40, "val": 20, "test": 20, "heldout": 20}
    assert [im["imgid"] for im in images] == list(range(100))
    for im in images:
        n = 1 if im["split"] == "pretrain" else 5
        assert len(im["sentences"]) == n == len(im["phrases"]) == len(im["sentids"])
        assert im["filepath"] == im["split"] and (built / "images" / im["filepath"] / im["filename"]).exists()
        assert len(im["boxes"]) == len(im["labels"])
        if im["split"] != "pretrain":
            assert all(s["style"] == "descriptive" for s in im["sentences"])
    assert not list(built.parent.glob(".emoji-scenes.tmp-*"))


def test_heldout_sprites_only_in_heldout_split(built, atlas):
    held = set(atlas.heldout_ids())
    for im in karpathy(built):
        if im["split"] == "heldout":
            assert held & set(im["labels"])
        else:
            assert not held & set(im["labels"])


def test_noise_and_style_mixture_are_exact(built):
    pre = [im for im in karpathy(built) if im["split"] == "pretrain"]
    noisy = [im for im in pre if im["noisy"]]
    assert len(noisy) == 10  # noise=0.25 of 40
    assert all(im["caption_source"] != im["filename"][:-4] and im["phrases"] == [[]] for im in noisy)
    assert all(im["phrases"][0] for im in pre if not im["noisy"])
    styles = Counter(im["sentences"][0]["style"] for im in pre)
    assert styles == {"alt_text": 24, "descriptive": 12, "narrative": 4}


def test_same_images_regardless_of_size_or_workers(tmp_path, built):
    other = tmp_path / "bigger"
    build_emoji_scenes(other, noise=0.25, workers=1, **{**SMALL, "size": 50})
    for name in ("pretrain/pretrain_0000007.png", "val/val_0000003.png", "heldout/heldout_0000019.png"):
        assert (other / "images" / name).read_bytes() == (built / "images" / name).read_bytes()
    same = tmp_path / "same"
    build_emoji_scenes(same, noise=0.25, workers=1, **SMALL)
    for rel in ("dataset_emoji_scenes.json", "shards/pretrain-000001.tar", "shards/val-000000.tar"):
        assert (same / rel).read_bytes() == (built / rel).read_bytes(), rel


def test_num_sprites_restricts_vocabulary(tmp_path, atlas):
    out = tmp_path / "small-vocab"
    summary = build_emoji_scenes(out, num_sprites=12, **SMALL)
    vocab = set(json.loads((out / "meta.json").read_text())["vocabulary"]["ids"])
    assert len(vocab) == summary["vocabulary_size"] == 12
    assert vocab == set(atlas.basic_order(exclude=atlas.heldout_ids())[:12])
    for im in karpathy(out):
        if im["split"] != "heldout":
            assert set(im["labels"]) <= vocab


def test_build_is_skipped_when_identical_and_atomic(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    first = build_emoji_scenes(out, **SMALL)
    assert not first["skipped"]
    stamp = (out / "meta.json").stat().st_mtime_ns
    again = build_emoji_scenes(out, **SMALL)
    assert again["skipped"] and (out / "meta.json").stat().st_mtime_ns == stamp

    # A build that dies half-way leaves the previous complete build untouched and no temp dir.
    def boom(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(build_module, "write_preview", boom)
    with pytest.raises(RuntimeError):
        build_emoji_scenes(out, **{**SMALL, "seed": 1})
    assert json.loads((out / "meta.json").read_text())["params"]["seed"] == 0
    assert not list(tmp_path.glob(".ds.tmp-*"))
    monkeypatch.undo()

    rebuilt = build_emoji_scenes(out, **{**SMALL, "seed": 1})
    assert not rebuilt["skipped"] and json.loads((out / "meta.json").read_text())["params"]["seed"] == 1


def test_build_refuses_to_replace_foreign_directory_and_bad_params(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="refusing"):
        build_emoji_scenes(foreign, **SMALL)
    with pytest.raises(ValueError, match="pretrain_styles"):
        build_emoji_scenes(tmp_path / "x", pretrain_styles={"tweets": 1.0}, **SMALL)
    with pytest.raises(ValueError, match="noise"):
        build_emoji_scenes(tmp_path / "x", noise=1.5, **SMALL)
