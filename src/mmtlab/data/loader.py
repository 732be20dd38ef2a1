"""The training data pipeline of a run: which dataset the config asks for, and a resumable loader."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DataLoader

from mmtlab.config import RunConfig
from mmtlab.data.pairs import Batch, ImageTextPairs, PairCollator, ResumableSampler
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.data.vqa import VQACollator, VQAPairs


def training_dataset(cfg: RunConfig) -> ImageTextPairs | VQAPairs:
    """Image-caption pairs, or (data.task = vqa) questions about the split's images."""
    records = load_split(cfg.data, cfg.data.train_split)
    if cfg.data.task == "vqa":
        return VQAPairs(records, cfg.model.image.size, cfg.data.max_train_pairs)
    return ImageTextPairs(records, cfg.model.image.size, cfg.data.max_train_pairs)


def training_batches(
    dataset: ImageTextPairs | VQAPairs, cfg: RunConfig, tokenizer: TextTokenizer, start_sample: int = 0
) -> Iterator[Batch]:
    """Endless micro-batches; `start_sample` samples of the stream are skipped (resume)."""
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=ResumableSampler(len(dataset), cfg.seed, start=start_sample),
        collate_fn=VQACollator(tokenizer) if isinstance(dataset, VQAPairs) else PairCollator(tokenizer),
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return iter(loader)
