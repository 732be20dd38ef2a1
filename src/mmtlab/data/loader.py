"""The training data pipeline of a run: which dataset the config asks for, and a resumable loader."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from mmtlab.config import RunConfig
from mmtlab.data.pairs import Batch, ImageTextPairs, PairCollator, ResumableSampler
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import TextTokenizer


def training_modalities(cfg: RunConfig) -> str:
    """What one training item is: "pairs" (image + caption), or for a self-supervised model of one
    modality "images", "captions" or "speech"."""
    if cfg.model.arch != "data2vec":
        return "pairs"
    mods = set(cfg.model.data2vec.modalities)
    if mods == {"image", "text"}:
        return "pairs"
    return {"image": "images", "text": "captions", "speech": "speech"}[mods.pop()]


def training_dataset(cfg: RunConfig):
    """The training data the run's model reads: image-caption pairs, or single-modality items."""
    kind = training_modalities(cfg)
    if kind == "speech":
        from mmtlab.data.speech import load_spoken
        from mmtlab.data.unimodal import SpokenCaptions

        spoken = load_spoken(cfg.data, cfg.data.speech_captions)
        return SpokenCaptions(spoken, cfg.data.speech_captions, cfg.model.speech.max_seconds, cfg.seed)
    records = load_split(cfg.data, cfg.data.train_split)
    if kind == "images":
        from mmtlab.data.unimodal import ImagesOnly

        return ImagesOnly(records, cfg.model.image.size, cfg.data.max_train_pairs)
    if kind == "captions":
        from mmtlab.data.unimodal import CaptionsOnly

        return CaptionsOnly(records, cfg.data.max_train_pairs)
    return ImageTextPairs(records, cfg.model.image.size, cfg.data.max_train_pairs)


def training_batches(
    dataset: ImageTextPairs, cfg: RunConfig, tokenizer: TextTokenizer, start_sample: int = 0
) -> Iterator[Batch]:
    """Endless micro-batches; `start_sample` samples of the stream are skipped (resume)."""
    workers = cfg.data.num_workers
    collate = dataset.collator(tokenizer) if hasattr(dataset, "collator") else PairCollator(tokenizer)
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=ResumableSampler(len(dataset), cfg.seed, start=start_sample),
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return iter(loader)
