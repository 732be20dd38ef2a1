"""Readers for the real dataset formats: Karpathy JSON and WebDataset shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtlab.data.emoji_scenes import build_emoji_scenes
from mmtlab.data.formats.karpathy import ImageRecord, read_karpathy, tokenize, write_karpathy
from mmtlab.data.formats.webdataset import ShardStats, iter_shards, write_shards


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fmt") / "emoji-scenes"
    build_emoji_scenes(out, size=40, eval_size=20, heldout_size=10, shard_size=16, progress=False)
    return out


def png_bytes(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


# -------------------------------------------------------------------------------------- Karpathy


def test_reads_exported_karpathy_json(built):
    records = read_karpathy(built / "dataset_emoji_scenes.json")
    assert len(records) == 90 and all(isinstance(r, ImageRecord) for r in records)
    val = read_karpathy(built / "dataset_emoji_scenes.json", split="val")
    assert len(val) == 20 and all(r.split == "val" and len(r.captions) == 5 for r in val)
    both = read_karpathy(built / "dataset_emoji_scenes.json", split=["val", "test"])
    assert len(both) == 40
    r = val[0]
    assert r.path == built / "images" / "val" / "val_0000000.png" and r.path.exists()
    assert len(r.boxes) == len(r.labels) >= 1 and len(r.phrases) == 5
    assert r.extra["styles"] == ["descriptive"] * 5 and r.extra["noisy"] is False
    for caption, phrases in zip(r.captions, r.phrases):
        for p in phrases:
            assert caption[p["start"] : p["end"]] == p["text"]
    with Image.open(r.path) as im:
        assert im.size == (64, 64)


def test_reads_flickr_and_coco_style_files(tmp_path):
    flickr = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "1000092795.jpg",
                "imgid": 0,
                "split": "test",
                "sentids": [0, 1],
                "sentences": [
                    {
                        "raw": "Two young guys with shaggy hair look at their hands.",
                        "tokens": ["two", "young", "guys"],
                        "imgid": 0,
                        "sentid": 0,
                    },
                    {"tokens": ["a", "dog", "runs"], "imgid": 0, "sentid": 1},
                ],
            },
            {
                "filename": "10002456.jpg",
                "imgid": 1,
                "split": "train",
                "sentids": [2],
                "sentences": [{"raw": "Several men in hard hats.", "imgid": 1, "sentid": 2}],
            },
        ],
    }
    path = tmp_path / "dataset_flickr30k.json"
    path.write_text(json.dumps(flickr))
    recs = read_karpathy(path, image_root=tmp_path / "flickr30k-images", split="test")
    assert [r.image_id for r in recs] == [0]
    assert recs[0].path == tmp_path / "flickr30k-images" / "1000092795.jpg"
    assert recs[0].captions == ["Two young guys with shaggy hair look at their hands.", "a dog runs"]
    assert recs[0].boxes is None and recs[0].labels is None and recs[0].phrases is None

    coco = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000391895.jpg",
                "imgid": 0,
                "split": "restval",
                "cocoid": 391895,
                "sentids": [0],
                "sentences": [{"raw": "A man riding a bike.", "sentid": 0}],
            },
            {
                "filepath": "train2014",
                "filename": "COCO_train2014_000000057870.jpg",
                "imgid": 1,
                "split": "train",
                "cocoid": 57870,
                "sentids": [1],
                "sentences": [{"raw": "A restaurant.", "sentid": 1}],
            },
        ],
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(coco))
    recs = read_karpathy(path, image_root="/data/coco", split=["train", "restval"])
    assert [r.split for r in recs] == ["restval", "train"]
    assert recs[0].path == Path("/data/coco/val2014/COCO_val2014_000000391895.jpg")
    assert recs[0].extra["cocoid"] == 391895


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"images": [', "not valid JSON"),
        ("[1, 2]", "'images' list"),
        ('{"images": [{"split": "val", "sentences": []}]}', "missing field 'filename'"),
        ('{"images": [{"filename": "a.jpg", "split": "val", "sentences": [{"imgid": 0}]}]}', "'raw'"),
        ('{"images": [{"filename": "a.jpg", "split": "val", "sentences": "x"}]}', "'sentences' must be list"),
        ('{"images": [{"filename": "a.jpg", "split": "val", "sentences": []}]}', "no images in split"),
    ],
)
def test_malformed_karpathy_json_names_file_and_field(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        read_karpathy(path, split="test")
    assert "broken.json" in str(err.value)


def test_write_karpathy_numbers_images_and_sentences(tmp_path):
    path = tmp_path / "k.json"
    counts = write_karpathy(
        path,
        [
            {
                "filename": "a.png",
                "split": "val",
                "captions": ["A cat.", "Two dogs, barking!"],
                "boxes": [[0, 0, 1, 1]],
            },
            {"filename": "b.png", "filepath": "imgs", "split": "test", "captions": ["o’clock"]},
        ],
        dataset="toy",
    )
    assert counts == {"images": 2, "sentences": 3}
    data = json.loads(path.read_text())
    assert data["images"][1]["sentids"] == [2] and data["images"][0]["boxes"] == [[0, 0, 1, 1]]
    assert data["images"][0]["sentences"][1]["tokens"] == ["two", "dogs", "barking"]
    assert tokenize("It's five o’clock.") == ["it's", "five", "o’clock"]
    assert read_karpathy(path)[1].path == tmp_path / "imgs" / "b.png"


# ------------------------------------------------------------------------------------ WebDataset


def test_reads_exported_shards_like_the_json(built):
    stats = ShardStats()
    samples = list(iter_shards(str(built / "shards" / "pretrain-{000000..000002}.tar"), stats=stats))
    assert len(samples) == 40 and stats.shards == 3 and stats.skipped == 0 and stats.samples == 40
    records = {r.path.stem: r for r in read_karpathy(built / "dataset_emoji_scenes.json")}
    for s in samples:
        rec = records[s["key"]]
        assert s["captions"] == rec.captions and s["meta"]["boxes"] == rec.boxes
        assert s["meta"]["labels"] == rec.labels and s["meta"]["phrases"] == rec.phrases
        assert s["meta"]["imgid"] == rec.image_id and s["image"].mode == "RGB"
        with Image.open(rec.path) as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(s["image"]))
    val = list(iter_shards(sorted((built / "shards").glob("val-*.tar")), decode=False))
    assert len(val) == 20 and isinstance(val[0]["image"], bytes) and len(val[0]["captions"]) == 5


def test_shards_are_readable_by_the_webdataset_package(built):
    wds = pytest.importorskip("webdataset")
    ds = wds.WebDataset(str(built / "shards" / "val-000000.tar"), shardshuffle=False).decode("pil")
    first = next(iter(ds))
    assert first["__key__"] == "val_0000000" and first["png"].size == (64, 64)
    assert first["json"]["captions"][0] == first["txt"]


def test_skips_and_counts_corrupt_samples_and_truncated_shards(tmp_path):
    good = png_bytes()
    samples = [(f"s{i:03d}", {"png": good, "txt": f"caption {i}", "json": json.dumps({"i": i})}) for i in range(6)]
    samples[1] = ("s001", {"png": b"\x89PNG\r\n\x1a\nnot really", "txt": "broken image"})
    samples[2] = ("s002", {"png": good[: len(good) // 2], "txt": "truncated image"})
    samples[3] = ("s003", {"png": good, "txt": "   "})  # empty caption
    samples[4] = ("s004", {"png": good, "txt": "bad json", "json": "{not json"})
    write_shards(tmp_path, "damaged", samples, shard_size=100)
    # A second shard cut inside a member's data, a third cut between members, then an intact one.
    full = write_shards(tmp_path / "full", "x", [(f"t{i:03d}", {"png": good, "txt": "ok"}) for i in range(5)], 100)[0]
    blob = full.read_bytes()
    with tarfile.open(full) as tf:
        t002_png = tf.getmembers()[4]
    (tmp_path / "damaged-000001.tar").write_bytes(blob[: t002_png.offset_data + 50])
    (tmp_path / "damaged-000002.tar").write_bytes(blob[: t002_png.offset])
    (tmp_path / "damaged-000003.tar").write_bytes(blob)

    reader = iter_shards(str(tmp_path / "damaged-{000000..000003}.tar"))
    keys = [s["key"] for s in reader]
    st = reader.stats
    # Shard 0: the two intact samples. Shard 1: the samples before the cut. Shard 2: the sample being
    # read at the cut might be incomplete and is dropped too. Shard 3: everything.
    assert keys == ["s000", "s005", "t000", "t001", "t000", "t000", "t001", "t002", "t003", "t004"]
    assert st.shards == 4 and st.shards_truncated == 2
    assert st.corrupt_images == 2 and st.missing_captions == 1 and st.bad_json == 1
    assert st.samples == len(keys) and st.skipped == 4 and len(st.errors) == 6


def test_missing_shard_is_counted_not_fatal(tmp_path):
    write_shards(tmp_path, "ok", [("a", {"png": png_bytes(), "txt": "hi"})], 10)
    reader = iter_shards([tmp_path / "nope-000000.tar", tmp_path / "ok-000000.tar"])
    assert [s["key"] for s in reader] == ["a"] and reader.stats.shards_unreadable == 1
