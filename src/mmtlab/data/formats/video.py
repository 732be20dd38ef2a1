"""Video files: H.264 MP4 through PyAV, MSR-VTT-style JSON annotations, WebVid-style shards.

- `encode_mp4(frames)` writes H.264 (libx264, yuv420p, constant QP, one thread) so the same frames
  give the same bytes; `decode_mp4(src, stride, max_frames)` returns uint8 [T, H, W, 3], keeping
  every `stride`-th frame.
- `read_msrvtt(root, split)` reads `annotations.json` ({"videos": [{video_id, split, ...}],
  "sentences": [{video_id, caption, sen_id}]}, the MSR-VTT layout) plus the `videos/` folder.
- `iter_video_shards(pattern)` reads WebDataset shards whose samples are `.mp4` + `.txt` (WebVid
  style), through the shard reader of formats/webdataset.py (truncated shards are counted there).

Videos that do not decode (corrupt, truncated, empty) are skipped and counted in `VideoStats`,
never a crash mid-epoch.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mmtlab.data.formats.webdataset import MAX_LOGGED_ERRORS, ShardReader, ShardStats

CODEC = "libx264"


@dataclass
class VideoStats:
    videos: int = 0  # yielded
    corrupt_videos: int = 0  # did not decode, or decoded to no frames
    missing_videos: int = 0  # annotated but no file / no .mp4 member
    missing_captions: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.corrupt_videos + self.missing_videos + self.missing_captions

    def log(self, message: str) -> None:
        if len(self.errors) < MAX_LOGGED_ERRORS:
            self.errors.append(message)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"} | {"skipped": self.skipped}


class VideoDecodeError(ValueError):
    pass


def encode_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """uint8 frames [T, H, W, 3] (H, W even) -> MP4 bytes."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream(CODEC, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        # near-lossless constant quality; one thread and no B-frame lookahead keep bytes deterministic
        stream.options = {"qp": "4", "threads": "1", "bf": "0"}
        stream.thread_count = 1
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def decode_mp4(src: bytes | str | Path, stride: int = 1, max_frames: int | None = None) -> np.ndarray:
    """Frames [T, H, W, 3] uint8, every `stride`-th from the first; raises VideoDecodeError on damage."""
    import av

    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    name = src if not isinstance(src, bytes) else "<bytes>"
    try:
        with av.open(io.BytesIO(src) if isinstance(src, bytes) else str(src), mode="r") as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{name}: no video stream")
            frames = []
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) == max_frames:
                        break
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(f"{name}: does not decode ({type(e).__name__}: {e})") from None
    if not frames:
        raise VideoDecodeError(f"{name}: no frames decoded")
    return np.stack(frames)


def _load(stats: VideoStats, where: str, src, stride: int, max_frames: int | None) -> np.ndarray | None:
    try:
        return decode_mp4(src, stride, max_frames)
    except VideoDecodeError as e:
        stats.corrupt_videos += 1
        stats.log(f"{where}: {e}")
        return None


def read_msrvtt(
    root: str | Path,
    split: str,
    *,
    stride: int = 1,
    max_frames: int | None = None,
    stats: VideoStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Samples {video_id, frames, captions, meta} of one split of an MSR-VTT-style build."""
    root = Path(root)
    stats = stats if stats is not None else VideoStats()
    path = root / "annotations.json"
    try:
        ann = json.loads(path.read_text())
        videos, sentences = ann["videos"], ann["sentences"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not an MSR-VTT annotation file with 'videos' and 'sentences' ({e})") from None
    caps: dict[str, list[str]] = {}
    for s in sentences:
        caps.setdefault(s["video_id"], []).append(s["caption"])
    for v in videos:
        if v.get("split") != split:
            continue
        vid = v["video_id"]
        if not caps.get(vid):
            stats.missing_captions += 1
            stats.log(f"{path}: {vid} has no sentences")
            continue
        file = root / "videos" / f"{vid}.mp4"
        if not file.is_file():
            stats.missing_videos += 1
            stats.log(f"{file}: missing")
            continue
        frames = _load(stats, str(file), file, stride, max_frames)
        if frames is None:
            continue
        stats.videos += 1
        yield {"video_id": vid, "frames": frames, "captions": caps[vid], "meta": v}


def iter_video_shards(
    urls_or_pattern: str | Path | Sequence[str | Path],
    *,
    stride: int = 1,
    max_frames: int | None = None,
    stats: VideoStats | None = None,
    shard_stats: ShardStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Samples {key, frames, captions, meta, url} of WebVid-style shards (.mp4 + .txt [+ .json])."""
    stats = stats if stats is not None else VideoStats()
    reader = _VideoShardReader(urls_or_pattern, decode=False, stats=shard_stats)
    for s in reader:
        where = f"{s['url']}:{s['key']}"
        if s["video"] is None:
            stats.missing_videos += 1
            stats.log(f"{where}: no .mp4 member")
            continue
        frames = _load(stats, where, s["video"], stride, max_frames)
        if frames is None:
            continue
        stats.videos += 1
        yield {"key": s["key"], "frames": frames, "captions": s["captions"], "meta": s["meta"], "url": s["url"]}


class _VideoShardReader(ShardReader):
    """The image shard reader's grouping, captions and JSON checks; the media member is the .mp4
    (decoded by the caller, which counts a missing one)."""

    def _sample(self, url: str, key: str, members: dict[str, bytes]) -> dict[str, Any] | None:
        head = self._meta_and_captions(url, key, members)
        if head is None:
            return None
        meta, captions = head
        return {"key": key, "video": members.get("mp4"), "captions": captions, "meta": meta, "url": url}
