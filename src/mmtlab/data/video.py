"""Video clips as a model's image source: records of an MSR-VTT-style build, decoded on demand.

`read_video_records(root, split)` gives records shaped like the Karpathy image records (`path`,
`captions`, ...) so the pair datasets, retrieval and captioning evals take them unchanged; the
video-ness lives in `VideoCache`, which `data.loader.image_source` returns when the model has a
video encoder (model.video): `get(i)` decodes clip i to uint8 [T, 3, H, W] (every
`data.frame_stride`-th frame, the first `model.video.frames` of them) and `stack` makes the
float [B, T, 3, H, W] batch. A clip that does not decode, or is shorter than the model's frames,
is remembered in `bad` and skipped (counted like an undecodable image). `load_clip` is that
decoding alone, which the interleaved documents' collator (data/interleaved.py) uses for clips.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtlab.data.formats.karpathy import ImageRecord
from mmtlab.data.formats.video import VideoDecodeError, decode_mp4
from mmtlab.data.pairs import ImageCache

ANNOTATIONS = "annotations.json"
QA = "qa.json"


def is_clip(path: str | Path) -> bool:
    """Whether a record's file is a video clip (a video build's records point at .mp4 files)."""
    return str(path).endswith(".mp4")


def is_video_root(root: str | Path) -> bool:
    root = Path(root)
    return (root / ANNOTATIONS).is_file() and not any(root.glob("dataset_*.json"))


def read_video_records(root: str | Path, split: str) -> list[ImageRecord]:
    """One record per video of `split` (path = its .mp4, captions = its sentences, in file order);
    with a qa.json beside it, each record's `extra["questions"]` holds its questions."""
    root = Path(root)
    path = root / ANNOTATIONS
    try:
        ann = json.loads(path.read_text())
        videos, sentences = ann["videos"], ann["sentences"]
        caps: dict[str, list[str]] = {}
        for s in sentences:
            caps.setdefault(s["video_id"], []).append(s["caption"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an MSR-VTT annotation file with 'videos' and 'sentences' ({e})") from None
    qa: dict[str, list[dict]] = {}
    qa_path = root / QA
    if qa_path.is_file():  # MSRVTT-QA-like: {split: [{video_id, question, answer, type}]}
        try:
            for q in json.loads(qa_path.read_text()).get(split, []):
                qa.setdefault(q["video_id"], []).append(q)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{qa_path}: not a {{split: [{{video_id, question, answer, type}}]}} file ({e})") from None
    records = []
    for v in (v for v in videos if v.get("split") == split):
        extra = {k: v[k] for k in ("video_id", "events", "boxes", "names") if k in v}
        if qa:
            extra["questions"] = qa.get(v["video_id"], [])
        file = root / "videos" / f"{v['video_id']}.mp4"
        records.append(ImageRecord(len(records), file, split, caps.get(v["video_id"], []), extra=extra))
    return records


def load_clip(path: str | Path, size: int, frames: int, stride: int = 1) -> Tensor:
    """uint8 [frames, 3, size, size]: every `stride`-th frame from the first, resized. Raises
    VideoDecodeError for a clip that does not decode or has fewer frames (never padded)."""
    decoded = decode_mp4(path, stride, frames)
    if len(decoded) < frames:
        raise VideoDecodeError(f"{path}: {len(decoded)} frames at stride {stride}, the model reads {frames}")
    clip = torch.from_numpy(decoded).permute(0, 3, 1, 2).contiguous()  # [T, 3, H, W]
    if clip.shape[-1] != size or clip.shape[-2] != size:
        clip = F.interpolate(clip.float(), size=(size, size), mode="bilinear", antialias=True)
        clip = clip.round().clamp(0, 255).to(torch.uint8)
    return clip


class VideoCache(ImageCache):
    """Decoded clips [T, 3, H, W] by record index: ImageCache's memo and bad-file set over MP4s."""

    load_errors = (VideoDecodeError, OSError)

    def __init__(self, records: Sequence, size: int, frames: int, stride: int = 1, keep: bool = True):
        super().__init__(records, size, keep)
        self.frames, self.stride = frames, stride

    def _load(self, i: int) -> Tensor:
        return load_clip(self.records[i].path, self.size, self.frames, self.stride)

    def subset(self, idx: Sequence[int]) -> VideoCache:
        return VideoCache([self.records[i] for i in idx], self.size, self.frames, self.stride, self.keep)
