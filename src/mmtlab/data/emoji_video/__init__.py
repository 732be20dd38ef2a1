"""emoji-video: deterministic clips of sprites doing things in order, in real video formats.

`build_emoji_video(out)` writes
  OUT/videos/{video_id}.mp4       H.264 clips (PyAV)
  OUT/annotations.json            MSR-VTT layout: videos (+ events, per-frame boxes, caption styles)
                                  and sentences (5 descriptive captions per video)
  OUT/qa.json                     {split: [{video_id, question, answer, type}]} (MSRVTT-QA-like)
  OUT/shards/{split}-NNNNNN.tar   WebVid-style WebDataset: .mp4 + .txt (alt_text caption) + .json
  OUT/summary.json
Readers are in data/formats/video.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from mmtlab.data.emoji_scenes.scenes import scene_rng
from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
from mmtlab.data.emoji_video.clips import Clip, generate_clip, render_clip, reverse_clip
from mmtlab.data.emoji_video.text import QUESTION_TYPES, captions, questions
from mmtlab.data.formats.video import encode_mp4
from mmtlab.data.formats.webdataset import ShardWriter

__all__ = ["Clip", "QUESTION_TYPES", "build_emoji_video", "captions", "generate_clip", "questions",
           "render_clip", "reverse_clip"]  # fmt: skip


def build_emoji_video(
    out: str | Path,
    *,
    size: int = 2000,
    eval_size: int = 200,
    seed: int = 0,
    num_frames: int = 8,
    frame_size: int = 64,
    num_sprites: int = 20,
    fps: int = 8,
    shard_size: int = 500,
) -> dict:
    if size < 1 or eval_size < 1:
        raise ValueError(f"size and eval_size must be at least 1 (got {size}, {eval_size})")
    if frame_size % 2:
        raise ValueError(f"frame_size must be even for H.264 (yuv420p), got {frame_size}")
    atlas = SpriteAtlas.load()
    vocab = atlas.basic_order()[:num_sprites]
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos, sentences, qa = [], [], {}
    splits = {"train": size, "val": eval_size, "test": eval_size}
    for split, n in splits.items():
        qa[split] = []
        with ShardWriter(out / "shards", split, shard_size) as shards:
            for i in range(n):
                clip = generate_clip(atlas, vocab, seed, split, i, num_frames, frame_size)
                vid = f"{split}{i}"
                mp4 = encode_mp4(render_clip(atlas, clip), fps)
                (out / "videos" / f"{vid}.mp4").write_bytes(mp4)
                caps = captions(clip, scene_rng(seed, f"video-{split}", i, 1))
                videos.append({"video_id": vid, "split": split, "id": len(videos), "fps": fps,
                               "num_frames": num_frames, "captions": caps, **clip.to_dict()})  # fmt: skip
                for c in caps["descriptive"]:
                    sentences.append({"video_id": vid, "caption": c, "sen_id": len(sentences)})
                qs = [{"video_id": vid, **q} for q in questions(clip)]
                qa[split] += qs
                meta = {"captions": caps["alt_text"], "descriptive": caps["descriptive"], "questions": qs,
                        **clip.to_dict()}  # fmt: skip
                shards.write(vid, {"mp4": mp4, "txt": caps["alt_text"][0], "json": json.dumps(meta)})
    (out / "annotations.json").write_text(json.dumps({"info": {"name": "emoji-video", "seed": seed},
                                                      "videos": videos, "sentences": sentences}))  # fmt: skip
    (out / "qa.json").write_text(json.dumps(qa))
    summary = {
        "counts": {k: v for k, v in splits.items()}
        | {"sentences": len(sentences), "questions": sum(map(len, qa.values()))},  # fmt: skip
        "num_frames": num_frames,
        "frame_size": frame_size,
        "fps": fps,
        "codec": "h264",
        "seed": seed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
