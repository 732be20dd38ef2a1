"""The training data pipeline of a run: which dataset the config asks for, and a resumable loader."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from mmtlab.config import RunConfig
from mmtlab.data.pairs import Batch, ImageCache, ImageTextPairs, PairCollator, ResumableSampler
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import TextTokenizer


def image_source(cfg: RunConfig, records, progress: bool = True):
    """What models read for `records`: decoded pixels, or toy-detector regions (computed once per
    dataset split and cached, see data/regions.py)."""
    if cfg.model.image.input == "regions":
        from mmtlab.data.regions import load_regions

        r = cfg.data.regions
        return load_regions(
            records,
            num_regions=r.num_regions,
            seed=r.seed,
            detector=r.detector,
            cache_dir=r.cache_dir,
            progress=progress,
        )
    return ImageCache(records, cfg.model.image.size)


def with_image_inputs(cfg: RunConfig, source) -> RunConfig:
    """The config with the region feature size and class count taken from the detector's regions."""
    if cfg.model.image.input != "regions":
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.model.image.region_dim, cfg.model.image.region_classes = source.feature_dim, source.num_classes
    return cfg


def training_dataset(cfg: RunConfig) -> ImageTextPairs:
    records = load_split(cfg.data, cfg.data.train_split)
    images = image_source(cfg, records) if cfg.model.image.input == "regions" else None
    return ImageTextPairs(records, cfg.model.image.size, cfg.data.max_train_pairs, images=images)


def training_batches(
    dataset: ImageTextPairs, cfg: RunConfig, tokenizer: TextTokenizer, start_sample: int = 0
) -> Iterator[Batch]:
    """Endless micro-batches; `start_sample` samples of the stream are skipped (resume)."""
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=ResumableSampler(len(dataset), cfg.seed, start=start_sample),
        collate_fn=PairCollator(tokenizer, dataset.images.stack),
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return iter(loader)
