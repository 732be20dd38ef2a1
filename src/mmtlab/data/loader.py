"""The training data pipeline of a run: which dataset the config asks for, and a resumable loader.

`data.format: karpathy` reads a JSON + image files (map-style, sampled by `ResumableSampler`);
`webdataset` streams tar shards (data/stream.py). Both give endless micro-batches of
`train.batch_size / world` pairs to each of `world` processes, together the global batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

from torch.utils.data import DataLoader

from mmtlab.config import ConfigError, RunConfig
from mmtlab.data.pairs import Batch, ImageCache, ImageTextPairs, PairCollator, ResumableSampler
from mmtlab.data.sources import load_split
from mmtlab.data.stream import ShardStream
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.data.vqa import VQACollator, VQAPairs
from mmtlab.families import family_of


def training_modalities(cfg: RunConfig) -> str:
    """What one training item is, as the model's family says (mmtlab/families.py): "pairs" (image +
    caption), "images", "captions" or "speech" (one modality), "documents" (interleaved image-text
    documents) or "document_text" (their text alone)."""
    return family_of(cfg).data(cfg)


def image_source(cfg: RunConfig, records, progress: bool = True):
    """What models read for `records`: decoded pixels, video clips (a model with model.video, see
    data/video.py), or toy-detector regions (computed once per dataset split and cached, see
    data/regions.py)."""
    if cfg.model.video is not None:
        from mmtlab.data.video import VideoCache

        return VideoCache(records, cfg.model.image.size, cfg.model.video.frames, cfg.data.frame_stride)
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


def region_features(cfg: RunConfig, source) -> tuple[int, int] | None:
    """(feature size, classes) of a region model's inputs, for config.resolve: from the detector's
    regions, or from the detector itself when there are none (a text-only run still builds a region
    model). None for pixel inputs."""
    if cfg.model.image.input != "regions":
        return None
    if source is None:
        from mmtlab.data.detector import load_detector

        det = load_detector(cfg.data.regions.detector)
        return det.feature_dim, det.num_classes
    return source.feature_dim, source.num_classes


def training_dataset(cfg: RunConfig):
    """What the run's model trains on: image-caption pairs (a map-style dataset or a stream of
    shards), (data.task = vqa) questions about the split's images, or single-modality items."""
    kind = training_modalities(cfg)
    if cfg.data.format == "webdataset":
        if kind != "pairs":
            raise ConfigError(f"data.format: webdataset streams image-caption pairs; a {kind} model needs karpathy")
        if cfg.data.task == "vqa":
            raise ConfigError("data.task: vqa needs data.format: karpathy (questions are made from each image's boxes)")
        if cfg.model.image.input == "regions":
            raise ConfigError("model.image.input: regions needs data.format: karpathy (regions are cached per split)")
        return ShardStream.from_config(cfg.data, cfg.model.image.size, cfg.seed)
    if kind == "speech":
        from mmtlab.data.speech import load_spoken
        from mmtlab.data.unimodal import SpokenCaptions

        spoken = load_spoken(cfg.data, cfg.data.speech_captions)
        return SpokenCaptions(spoken, cfg.data.speech_captions, cfg.model.speech.max_seconds, cfg.seed)
    if kind in ("documents", "document_text"):
        return _documents(cfg, with_images=kind == "documents")
    records = load_split(cfg.data, cfg.data.train_split)
    if kind == "images":
        from mmtlab.data.unimodal import ImagesOnly

        return ImagesOnly(records, cfg.model.image.size, cfg.data.max_train_pairs)
    if kind == "captions":
        from mmtlab.data.unimodal import CaptionsOnly

        return CaptionsOnly(records, cfg.data.max_train_pairs)
    if cfg.data.task == "vqa":
        if cfg.model.image.input == "regions":
            raise ConfigError("data.task: vqa reads pixels; set model.image.input: patches")
        images = image_source(cfg, records) if cfg.model.video else None
        return VQAPairs(records, cfg.model.image.size, cfg.data.max_train_pairs, images=images)
    images = image_source(cfg, records) if cfg.model.image.input == "regions" or cfg.model.video else None
    return ImageTextPairs(records, cfg.model.image.size, cfg.data.max_train_pairs, images=images)


def _documents(cfg: RunConfig, with_images: bool):
    """The text of interleaved documents (a causal LM), or a mixture of documents with their images
    or clips and image-caption pairs (the pairs: one-chunk documents of the training split; Flamingo)."""
    from mmtlab.data.interleaved import InterleavedDocuments, Mixture, pair_documents, read_documents

    d = cfg.data
    docs, corrupt = read_documents(d.interleaved) if d.interleaved else ([], 0)
    if not with_images:
        dataset = InterleavedDocuments(docs, 0, with_images=False)
        dataset.corrupt_documents = corrupt
        return dataset
    size = cfg.model.flamingo.vision["image"]["size"]
    weights = d.mixture or {"interleaved": 1.0}
    datasets = {}
    for name in weights:
        # pairs of a video build are one-clip documents; a clip is read as the resampler's max_frames frames
        items = docs if name == "interleaved" else pair_documents(load_split(d, d.train_split))
        items = items[: d.max_train_pairs] if d.max_train_pairs else items
        datasets[name] = InterleavedDocuments(
            items, size, True, d.max_images, frames=cfg.model.flamingo.max_frames, frame_stride=d.frame_stride
        )
    mix = Mixture(datasets, weights)
    mix.corrupt_documents = corrupt
    return mix


def _mixture_batches(mix, cfg: RunConfig, tokenizer, start_sample: int, rank: int, world: int) -> Iterator:
    """Micro-batches from each dataset in turn, each carrying its dataset's loss weight."""
    start = start_sample // len(mix.datasets)
    loaders = [
        (mix.weights[name], _sampled_batches(ds, ds.collator(tokenizer), cfg, cfg.seed + k, start, rank, world))
        for k, (name, ds) in enumerate(mix.datasets.items())
    ]
    while True:
        for weight, it in loaders:
            batch = next(it)
            batch.loss_weight = weight
            yield batch


def training_batches(
    dataset: ImageTextPairs | VQAPairs | ShardStream,
    cfg: RunConfig,
    tokenizer: TextTokenizer,
    start_sample: int = 0,
    rank: int = 0,
    world: int = 1,
    resume_state: dict | None = None,
) -> Iterator[Batch]:
    """Endless micro-batches of process `rank` of `world`; `start_sample` samples of the global
    stream are skipped (resume). `resume_state` is the checkpoint's state (a stream's readers)."""
    if hasattr(dataset, "weights"):  # a data.interleaved.Mixture
        return _mixture_batches(dataset, cfg, tokenizer, start_sample, rank, world)
    if isinstance(dataset, ShardStream):
        return _stream_batches(dataset, cfg, tokenizer, start_sample, rank, world, resume_state or {})
    if hasattr(dataset, "collator"):  # single-modality items (data/unimodal.py)
        collate = dataset.collator(tokenizer)
    elif isinstance(dataset, VQAPairs):
        collate = VQACollator(tokenizer)
    else:
        stack = dataset.images.stack
        if cfg.data.crop_scale is not None and cfg.model.image.input == "patches":
            from mmtlab.data.augment import cropping

            stack = cropping(stack, cfg.data.crop_scale, cfg.seed)
        collate = PairCollator(tokenizer, stack)
        if cfg.data.background_runs:
            from mmtlab.data.grouped import GroupedSampler, background_keys

            sampler = GroupedSampler(
                background_keys(dataset), cfg.data.background_runs, cfg.seed, start_sample, rank, world
            )
            return _sampled_batches(dataset, collate, cfg, cfg.seed, start_sample, rank, world, sampler)
    return _sampled_batches(dataset, collate, cfg, cfg.seed, start_sample, rank, world)


def _sampled_batches(
    dataset, collate, cfg: RunConfig, seed: int, start: int, rank: int, world: int, sampler=None
) -> Iterator:
    """Endless micro-batches of an indexable dataset through a resumable, rank-sharded sampler."""
    workers = cfg.data.num_workers
    loader = DataLoader(
        dataset,
        batch_size=cfg.train.batch_size // world,
        sampler=sampler or ResumableSampler(len(dataset), seed, start=start, rank=rank, world=world),
        collate_fn=collate,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    return iter(loader)


def _stream_batches(
    stream: ShardStream, cfg: RunConfig, tokenizer, start_sample: int, rank: int, world: int, resume_state: dict
) -> Iterator[Batch]:
    workers = cfg.data.num_workers
    start_batch = start_sample // cfg.train.batch_size  # micro-batches every rank has consumed
    seed = cfg.seed
    if start_batch:
        same_readers = resume_state.get("stream") == {"world": world, "workers": workers}
        if cfg.data.stream_resume == "reseed" or not same_readers:
            if cfg.data.stream_resume == "exact":
                warnings.warn(
                    f"data.stream_resume: exact needs the readers of the interrupted run "
                    f"({resume_state.get('stream')}), now world={world} workers={workers}: starting a reseeded stream",
                    stacklevel=2,
                )
            seed, start_batch = cfg.seed * 1_000_003 + start_batch, 0
    local_batch = cfg.train.batch_size // world
    dataset = stream.batches(
        tokenizer, local_batch, rank=rank, world=world, workers=workers, start_batch=start_batch, seed=seed
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    return iter(loader)
