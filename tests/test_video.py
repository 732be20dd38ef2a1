"""emoji-video data, video readers and the TubeViT-style video encoder."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
from mmtlab.data.emoji_video import build_emoji_video, generate_clip, questions, render_clip, reverse_clip
from mmtlab.data.formats.video import VideoStats, decode_mp4, encode_mp4, iter_video_shards, read_msrvtt

pytest.importorskip("av")


@pytest.fixture(scope="module")
def atlas():
    return SpriteAtlas.load()


@pytest.fixture(scope="module")
def built(tmp_path_factory, atlas):
    out = tmp_path_factory.mktemp("emoji-video")
    build_emoji_video(out, size=6, eval_size=3, num_frames=8)
    return out


def test_clip_boxes_are_exact(atlas):
    clip = generate_clip(atlas, atlas.basic_order()[:20], 0, "train", 3)
    frames = render_clip(atlas, clip)
    bg = frames[0, 0, 0]
    for f, boxes in enumerate(clip.boxes()):
        drawn = np.any(frames[f] != bg, axis=-1)
        inside = np.zeros_like(drawn)
        for b in boxes:
            if b is not None:
                inside[max(b[1], 0) : b[3], max(b[0], 0) : b[2]] = True
        assert not (drawn & ~inside).any(), f"frame {f}: pixels drawn outside every box"


def test_time_questions_need_time(atlas):
    """A clip and its reversal hold the same frames, so any single-frame (or bag-of-frames) model
    gives both the same answer; the time answers differ on most pairs, so such a model cannot beat
    the answer prior on them."""
    vocab = atlas.basic_order()[:20]
    differ = Counter()
    total = Counter()
    for i in range(40):
        clip = generate_clip(atlas, vocab, 0, "test", i)
        rev = reverse_clip(clip)
        fwd, bwd = render_clip(atlas, clip), render_clip(atlas, rev)
        assert sorted(map(bytes, fwd)) == sorted(map(bytes, bwd))  # the same frames
        a = {q["type"]: q["answer"] for q in questions(clip)}
        b = {q["type"]: q["answer"] for q in questions(rev)}
        for t in ("first", "count_appear", "direction"):
            if t in a and t in b:
                total[t] += 1
                differ[t] += a[t] != b[t]
    # direction always flips; "first" and the appear count flip unless the events are symmetric
    assert differ["direction"] == total["direction"] > 0
    assert differ["first"] > 0.7 * total["first"]
    assert differ["count_appear"] > 0.3 * total["count_appear"]


def test_mp4_round_trip_and_stride(atlas):
    frames = render_clip(atlas, generate_clip(atlas, atlas.basic_order()[:20], 0, "train", 0))
    mp4 = encode_mp4(frames)
    assert mp4 == encode_mp4(frames)  # deterministic bytes
    back = decode_mp4(mp4)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 6  # H.264 at qp 4: near-lossless
    assert np.array_equal(decode_mp4(mp4, stride=3), back[::3])
    assert len(decode_mp4(mp4, stride=2, max_frames=2)) == 2


def test_msrvtt_reader(built):
    ann = json.loads((built / "annotations.json").read_text())
    assert {v["split"] for v in ann["videos"]} == {"train", "val", "test"}
    stats = VideoStats()
    samples = list(read_msrvtt(built, "val", stride=2, stats=stats))
    assert len(samples) == 3 and stats.skipped == 0
    assert samples[0]["frames"].shape == (4, 64, 64, 3)
    assert len(samples[0]["captions"]) == 5
    assert len(samples[0]["meta"]["boxes"]) == 8


def test_corrupt_and_truncated_videos_are_counted(built, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(built, root)
    (root / "videos" / "val0.mp4").write_bytes(b"not a video")
    data = (root / "videos" / "val1.mp4").read_bytes()
    (root / "videos" / "val1.mp4").write_bytes(data[: len(data) // 3])
    (root / "videos" / "val2.mp4").unlink()
    stats = VideoStats()
    assert list(read_msrvtt(root, "val", stats=stats)) == []
    assert (stats.corrupt_videos, stats.missing_videos) == (2, 1)
    assert all(("val0" in e or "val1" in e or "val2" in e) for e in stats.errors)


def test_webvid_shards(built, tmp_path):
    stats = VideoStats()
    samples = list(iter_video_shards(str(built / "shards" / "train-000000.tar"), stride=4, stats=stats))
    assert len(samples) == 6 and stats.videos == 6
    assert samples[0]["frames"].shape == (2, 64, 64, 3)
    assert "background" in samples[0]["captions"][0]  # the WebVid-like alt_text caption
    # a shard whose first video is damaged: that sample is skipped and counted, the rest read
    from mmtlab.data.formats.webdataset import ShardWriter

    good = encode_mp4(np.zeros((4, 16, 16, 3), np.uint8))
    with ShardWriter(tmp_path, "bad", 10) as w:
        w.write("a", {"mp4": b"\x00" * 100, "txt": "a damaged clip"})
        w.write("b", {"mp4": good, "txt": "a black clip"})
        w.write("c", {"txt": "no video member"})
    stats = VideoStats()
    keys = [s["key"] for s in iter_video_shards(str(tmp_path / "bad-000000.tar"), stats=stats)]
    assert keys == ["b"]
    assert (stats.corrupt_videos, stats.missing_videos, stats.videos) == (1, 1, 1)
