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


# ------------------------------------------------------------------------------------ video encoder

import torch  # noqa: E402

from mmtlab.config import ModelConfig  # noqa: E402
from mmtlab.config.sections import TubeConfig, VideoConfig  # noqa: E402
from mmtlab.models import build_model  # noqa: E402
from mmtlab.models.video import Tube, VideoEmbedding  # noqa: E402


def _mammut(video: dict | None, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="mammut", width=32, depth=2, heads=2, embed_dim=32, pool="mean",
                      layout_args={"vision_depth": 2, "cross_every": 2},
                      image={"size": 64, "patch": 8}, text={"max_len": 16, "vocab_size": 50},
                      outputs=["contrastive"], video=video)  # fmt: skip
    return build_model(cfg).eval()


def test_tube_shapes_and_coverage():
    """Each default tube shape yields the token count of its sparse grid, and together the tubes'
    receptive fields touch every frame and most of the clip's pixels (sparse, but not blind)."""
    cfg = VideoConfig()
    emb = VideoEmbedding(cfg, 32, 3)
    video = torch.randn(2, 3, 8, 64, 64)
    covered = torch.zeros(8, 64, 64, dtype=torch.bool)
    for tube, tc in zip(emb.tubes, cfg.tubes, strict=True):
        n = tube.grid((8, 64, 64))
        assert tube(video).shape == (2, n[0] * n[1] * n[2], 32)
        for t, y, x in tube.centres((8, 64, 64)).tolist():
            (kt, kh, kw) = tc.kernel
            t0, y0, x0 = round(t - kt / 2), round(y - kh / 2), round(x - kw / 2)
            covered[t0 : t0 + kt, y0 : y0 + kh, x0 : x0 + kw] = True
    assert covered.any(dim=(1, 2)).all()  # every frame
    assert 0.2 < covered.float().mean() < 1.0  # sparse
    # far fewer tokens than dense 2x8x8 3D patches (256), with frames at stride 4 (2 x 64)
    assert emb.num_tokens(8, 64, 64, 8) == 128 + 32 + 16 + 8
    with pytest.raises(ValueError, match="does not fit"):
        Tube(3, 8, (16, 8, 8), (1, 1, 1), (0, 0, 0)).grid((8, 64, 64))


def test_video_runs_through_the_image_vit():
    model = _mammut({})
    clip = torch.randn(2, 8, 3, 64, 64)
    tokens = model.image_tokens(clip)
    assert tokens.shape == (2, model.video_embed.num_tokens(8, 64, 64, 8), 32)
    emb = model.encode_image(clip)
    assert emb.shape == (2, 32) and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    # no parallel ViT: the video path adds only the tube convs and the gate
    extra = {n for n, _ in model.named_parameters() if n.startswith("video_embed")}
    tubes = {f"video_embed.tubes.{i}.proj.{w}" for i in range(3) for w in ("weight", "bias")}
    assert extra == {"video_embed.gate"} | tubes
    # an image run's weights fill everything else (init_from), and images give what they gave there
    image_model = _mammut(None, seed=1)
    missing, unexpected = model.load_state_dict(image_model.state_dict(), strict=False)
    assert set(missing) == extra and not unexpected
    images = torch.randn(2, 3, 64, 64)
    assert torch.equal(model.encode_image(images), image_model.encode_image(images))


def test_gate_zero_is_exactly_the_ungated_model():
    """The gated connection at 0 adds exactly nothing: tokens equal the `gate: false` arm's."""
    gated, plain = _mammut({}), _mammut({"gate": False})
    plain.load_state_dict({k: v for k, v in gated.state_dict().items() if k != "video_embed.gate"})
    clip = torch.randn(2, 8, 3, 64, 64)
    assert gated.video_embed.gate.item() == 0.0
    assert torch.equal(gated.image_tokens(clip), plain.image_tokens(clip))
    with torch.no_grad():
        gated.video_embed.gate.fill_(0.5)
    assert not torch.equal(gated.image_tokens(clip), plain.image_tokens(clip))


def test_frames_only_is_the_image_patches_plus_time():
    """Without tubes, a clip's tokens are exactly the image model's patch tokens of the sampled
    frames (its conv and learned positions), each plus the fixed time embedding of its frame."""
    from mmtlab.models.video import sincos

    model = _mammut({"tubes": [], "frame_stride": 4})
    clip = torch.randn(1, 8, 3, 64, 64)
    got = model.visual_embed(clip)
    per_frame = [model.image_embed(clip[:, t])[:, 1:] if model.image_embed.cls is not None
                 else model.image_embed(clip[:, t]) for t in (0, 4)]  # fmt: skip
    time = sincos(torch.tensor([0.0, 4.0]), 32)
    want = torch.cat([per_frame[0] + time[0], per_frame[1] + time[1]], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_ablation_arms_build():
    for video in ({"fixed_pos": False}, {"gate": False}, {"tubes": [], "frame_stride": 4},
                  {"tubes": [], "frame_stride": 8, "frame_start": 4}):  # fmt: skip
        m = _mammut(video)
        assert m.encode_image(torch.randn(1, 8, 3, 64, 64)).shape == (1, 32)
    # the single-middle-frame baseline sees frame 4 only: the other frames change nothing
    m = _mammut({"tubes": [], "frame_stride": 8, "frame_start": 4})
    a = torch.randn(1, 8, 3, 64, 64)
    b = a.clone()
    b[:, :4] = torch.randn(1, 4, 3, 64, 64)
    b[:, 5:] = 0
    assert torch.equal(m.encode_image(a), m.encode_image(b))
    assert m.video_embed.num_tokens(8, 64, 64, 8) == 64
    with pytest.raises(ValueError, match="needs tubes or a frame_stride"):
        VideoConfig(tubes=[], frame_stride=None)
    with pytest.raises(ValueError, match="tube kernel"):
        TubeConfig(kernel=(0, 8, 8), stride=(1, 1, 1))


# ------------------------------------------------------------------------------------ tasks


def test_video_build_is_a_data_root_for_training_and_eval(built):
    """load_split reads the MSR-VTT build; with model.video the image source decodes clips, and the
    retrieval and captioning evals take them through their usual code."""
    from mmtlab.config import DataConfig
    from mmtlab.data.sources import load_split
    from mmtlab.data.video import VideoCache
    from mmtlab.eval.retrieval import embed_records, retrieval_metrics

    records = load_split(DataConfig(root=str(built)), "test")
    assert len(records) == 3 and len(records[0].captions) == 5
    source = VideoCache(records, 64, frames=8, stride=1)
    assert source.get(0).shape == (8, 3, 64, 64)
    model = _mammut({})

    class Tok:  # a stand-in tokenizer: one token per word, ids from the word's hash
        def __call__(self, texts):
            ids = torch.tensor([[1 + sum(map(ord, w)) % 48 for w in t.split()[:8]] + [0] * (8 - len(t.split()[:8]))
                                for t in texts])  # fmt: skip
            return ids, ids > 0

    emb = embed_records(model, Tok(), records, source=source, progress=False)
    assert emb.images.shape == (3, 32) and len(emb.captions) == 15
    assert set(retrieval_metrics(emb)) >= {"i2t_r1", "t2i_r1"}
    # a clip shorter than the model's frames is skipped and counted, not padded
    short = VideoCache(records, 64, frames=8, stride=2)
    assert short.get(0) is None and short.bad == {0}


def test_videoqa_questions_come_from_qa_json(built):
    """A video build's qa.json feeds the VQA data and eval (make_questions reads the records' own
    questions), and accuracy is reported by the video question types with their majority answer."""
    from mmtlab.config import DataConfig
    from mmtlab.data.emoji_scenes.vqa import make_questions
    from mmtlab.data.sources import load_split
    from mmtlab.eval.vqa import vqa_accuracy

    records = load_split(DataConfig(root=str(built)), "val")
    qs = make_questions(records)
    assert {q.qtype for q in qs} >= {"first", "after", "count_appear"}
    assert all(0 <= q.record < len(records) for q in qs)
    result = vqa_accuracy(qs, [q.answer for q in qs])
    assert result["accuracy"] == 100.0 and set(result["n_by_type"]) == {q.qtype for q in qs}
    assert set(result["majority_answer"]) == set(result["n_by_type"])


# ------------------------------------------------------------------------------------ Flamingo


def test_flamingo_video_masking():
    """Clips [N, T, 3, H, W] go frames -> frozen vision -> resampler with time embeddings; each
    text token cross-attends only to the clip just before it, and frame order matters."""
    from test_flamingo import document, tiny_flamingo

    model, _ = tiny_flamingo()
    for p in (p for n, p in model.named_parameters() if n.endswith("_gate")):
        p.data.fill_(1.0)
    with torch.no_grad():
        model.resampler.time.normal_()  # trained time embeddings (they start at zero)
    tokens = document(model)[:1]  # text 0-2 | <clip> 3, text 4-6 | <clip> 7, text 8-11
    counts = torch.tensor([2])
    clips = torch.randn(2, 4, 3, 32, 32)

    def out(c):
        return model(tokens, model.media_tokens(c, counts))[0]

    base = out(clips)
    later = clips.clone()
    later[1, 2] = torch.randn(3, 32, 32)  # one frame of the second clip
    changed = out(later)
    assert torch.equal(base[:7], changed[:7])  # tokens before the second clip do not see it
    assert not torch.allclose(base[7:], changed[7:])
    earlier = clips.clone()
    earlier[0, 3] = torch.randn(3, 32, 32)
    assert torch.equal(out(earlier)[:3], base[:3]) and not torch.allclose(out(earlier)[3:7], base[3:7])
    # the same frames in the other order are another clip
    reversed_first = clips.clone()
    reversed_first[0] = clips[0].flip(0)
    assert not torch.allclose(out(reversed_first)[3:7], base[3:7])
