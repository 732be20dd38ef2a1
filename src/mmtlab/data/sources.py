"""Find a run's dataset on disk and read a split of it."""

from __future__ import annotations

from pathlib import Path

from mmtlab.config import DataConfig


class DatasetNotFound(FileNotFoundError):
    """The dataset a config points at is missing, malformed or lacks the split."""


def annotation_file(cfg: DataConfig) -> Path:
    if cfg.annotations:
        p = Path(cfg.annotations)
        if not p.exists():
            raise DatasetNotFound(f"data.annotations: no file at {p}")
        return p
    root = Path(cfg.root)
    found = sorted(root.glob("dataset_*.json")) if root.is_dir() else []
    if not found and (root / "annotations.json").is_file():  # a video build (MSR-VTT layout)
        return root / "annotations.json"
    if len(found) != 1:
        what = "no dataset_*.json" if not found else f"several dataset_*.json ({', '.join(f.name for f in found)})"
        raise DatasetNotFound(
            f"data.root: {what} in {root}. Build the embedded data with "
            f"`mmtlab data build emoji-scenes --out {root}` or set data.annotations to a Karpathy-format JSON."
        )
    return found[0]


def image_root(cfg: DataConfig) -> Path:
    if cfg.images:
        return Path(cfg.images)
    root = Path(cfg.root)
    return root / "images" if (root / "images").is_dir() else root


def load_split(cfg: DataConfig, split: str):
    """Records (image path + captions + optional boxes/grounding) of one split; for a video build
    (MSR-VTT-style annotations.json, `mmtlab data build emoji-video`) one record per clip."""
    from mmtlab.data.formats.karpathy import read_karpathy
    from mmtlab.data.video import is_video_root, read_video_records

    if not cfg.annotations and is_video_root(cfg.root):
        try:
            records = read_video_records(cfg.root, split)
        except ValueError as e:
            raise DatasetNotFound(str(e)) from None
        if not records:
            raise DatasetNotFound(f"split {split!r} is empty in {cfg.root}/annotations.json")
        return records

    path = annotation_file(cfg)
    try:
        records = read_karpathy(path, image_root(cfg), split=split)
    except ValueError as e:  # malformed JSON or a missing split: the message names file and field
        raise DatasetNotFound(str(e)) from None
    if not records:
        raise DatasetNotFound(f"split {split!r} is empty in {path}")
    return records
