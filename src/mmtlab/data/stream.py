"""Training pairs streamed from WebDataset tar shards (img2dataset output, or emoji-scenes' export).

Readers: every (rank, DataLoader worker) pair is one reader with its own endless stream. Without
resampling, each epoch shuffles the shard list (seeded by the epoch) and reader i of n reads
shards i, i + n, ... of it, so readers never share a shard within an epoch (this needs at least
n shards). With `data.resampled`, each reader draws shards with replacement from its own seeded
generator (open_clip's --dataset-resampled): no epochs, any number of shards and readers.
A shuffle buffer of `data.shuffle_buffer` samples mixes samples across the shards a reader has
open. Batches are formed per reader, then the DataLoader hands them out round-robin.

Bad data: `ShardReader` (formats/webdataset.py) skips and counts samples without an image or a
caption, bad JSON, and the rest of a truncated or unreadable shard. Images are decoded after
batching; one that does not decode drops out of its batch and is counted, as with files on disk.
Each batch carries the counts since the previous one (`Batch.skipped`, `Batch.damaged_shards`) of
the samples it consumed: a reader hands each good sample on with the skips and damaged shards it
met just before it, through the shuffle buffer, so the counts describe the stream up to what
training has consumed, not the shuffle buffer's read-ahead (nor a resume's read-through).

Resume: the stream is a function of (seed, number of ranks, number of workers). Micro-batch g
comes from worker slot g % workers, so a run resumed after k micro-batches rotates the slots by
k (the DataLoader always starts at worker 0) and each reader skips the batches its slot already
produced. Skipping reads the consumed samples again but does not decode them: `stream_resume:
exact` continues with bitwise the same batches as an uninterrupted run. `reseed` (also used when
the number of ranks or workers changed) starts a fresh stream seeded by the step instead: no
read-through, no exact replay.
"""

from __future__ import annotations

import glob
import io
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmtlab.config import DataConfig
from mmtlab.data.formats.webdataset import ShardReader, ShardStats, expand_urls
from mmtlab.data.pairs import BAD_IMAGE_ERRORS, Batch, PairCollator, load_image
from mmtlab.data.tokenizer import TextTokenizer

CAPTIONS_FOR_TOKENIZER = 100_000  # a tokenizer trained for a stream sees the first this many captions

# url, key, image bytes, caption, then the samples skipped and the shards found damaged since the
# reader's previous sample: they are counted when this one is consumed
Raw = tuple[str, str, bytes, str, int, int]


def shard_urls(cfg: DataConfig) -> list[str]:
    """The training shards a data config names (data.shards, or root/shards/<train_split>-*.tar)."""
    from mmtlab.data.sources import DatasetNotFound

    if cfg.shards:
        urls = expand_urls(cfg.shards)
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise DatasetNotFound(f"data.shards: {len(missing)} of {len(urls)} shards do not exist, e.g. {missing[0]}")
        return urls
    pattern = str(Path(cfg.root) / "shards" / f"{cfg.train_split}-*.tar")
    urls = sorted(glob.glob(pattern))
    if not urls:
        raise DatasetNotFound(
            f"data.shards: no shards match {pattern}; set data.shards to a pattern such as "
            "/data/cc3m/{00000..00331}.tar (img2dataset output) or build emoji-scenes"
        )
    return urls


def shuffle_buffer(samples: Iterator[Raw], size: int, rng: random.Random) -> Iterator[Raw]:
    """Yield samples in a random order using a buffer of `size` (reservoir-style); 0: in order."""
    if size <= 1:
        yield from samples
        return
    buf: list[Raw] = []
    for s in samples:
        if len(buf) < size:
            buf.append(s)
            continue
        i = rng.randrange(size)
        buf[i], s = s, buf[i]
        yield s
    rng.shuffle(buf)  # only reached if the source ends (tests); training streams are endless
    yield from buf


class ShardStream:
    """The shards of a run and how to read them; `batches()` gives the DataLoader's dataset."""

    empty_captions = 0  # no up-front pass over a stream: empty captions are counted in Batch.skipped

    def __init__(self, urls: list[str], image_size: int, *, seed: int = 0, resampled: bool = False, buffer: int = 1000):
        if not urls:
            raise ValueError("a stream needs at least one shard")
        self.urls, self.image_size, self.seed = list(urls), image_size, seed
        self.resampled, self.buffer = resampled, buffer

    @classmethod
    def from_config(cls, cfg: DataConfig, image_size: int, seed: int) -> ShardStream:
        return cls(shard_urls(cfg), image_size, seed=seed, resampled=cfg.resampled, buffer=cfg.shuffle_buffer)

    def captions(self, limit: int = CAPTIONS_FOR_TOKENIZER) -> Iterator[str]:
        """Captions in shard order, without decoding images (for training a tokenizer)."""
        n = 0
        for sample in ShardReader(self.urls, decode=False):
            for c in sample["captions"]:
                yield c
                n += 1
                if n >= limit:
                    return

    def _shards(self, reader: int, readers: int, seed: int, rng: random.Random) -> Iterator[str]:
        if self.resampled:
            while True:
                yield rng.choice(self.urls)
        epoch = 0
        while True:
            order = list(self.urls)
            random.Random(f"{seed}/epoch/{epoch}").shuffle(order)
            yield from order[reader::readers]
            epoch += 1

    def read(self, reader: int, readers: int, seed: int, stats: ShardStats) -> Iterator[Raw]:
        """Reader `reader`'s endless stream of undecoded samples, shuffled, one caption each."""
        rng = random.Random(f"{seed}/reader/{reader}/{readers}")
        empty_run = 0
        skipped, damaged = stats.skipped, _damaged(stats)  # counted so far: handed on with each sample
        for url in self._shards(reader, readers, seed, rng):
            got = 0
            for s in ShardReader([url], decode=False, stats=stats):
                got += 1
                caption = s["captions"][rng.randrange(len(s["captions"]))]
                yield url, s["key"], s["image"], caption, stats.skipped - skipped, _damaged(stats) - damaged
                skipped, damaged = stats.skipped, _damaged(stats)
            empty_run = 0 if got else empty_run + 1
            if empty_run > 2 * len(self.urls):
                raise RuntimeError(f"no readable sample in {empty_run} shards in a row: {stats.errors[:3]}")

    def shuffled(self, reader: int, readers: int, seed: int, stats: ShardStats) -> Iterator[Raw]:
        rng = random.Random(f"{seed}/shuffle/{reader}/{readers}")
        return shuffle_buffer(self.read(reader, readers, seed, stats), self.buffer, rng)

    def batches(
        self,
        tokenizer: TextTokenizer,
        batch_size: int,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        start_batch: int = 0,
        seed: int | None = None,
    ) -> StreamBatches:
        readers = world * max(1, workers)
        if not self.resampled and len(self.urls) < readers:
            raise ValueError(
                f"data.shards: {len(self.urls)} shards cannot feed {readers} readers ({world} processes x "
                f"{max(1, workers)} workers) without resampling; use more shards, fewer data.num_workers, "
                "or data.resampled: true"
            )
        return StreamBatches(self, tokenizer, batch_size, rank, world, max(1, workers), start_batch, seed)


class StreamBatches(IterableDataset):
    """Endless micro-batches of one rank; give it to a DataLoader with batch_size=None."""

    def __init__(
        self,
        stream: ShardStream,
        tokenizer: TextTokenizer,
        batch_size: int,
        rank: int,
        world: int,
        workers: int,
        start_batch: int,
        seed: int | None,
    ):
        self.stream, self.collate, self.batch_size = stream, PairCollator(tokenizer), batch_size
        self.rank, self.world, self.workers, self.start_batch = rank, world, workers, start_batch
        self.seed = stream.seed if seed is None else seed

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if (info.num_workers if info is not None else 1) != self.workers:
            raise ValueError(f"StreamBatches was built for {self.workers} workers")
        slot = (self.start_batch + worker) % self.workers
        reader, readers = self.rank * self.workers + slot, self.world * self.workers
        stats = ShardStats()
        samples = self.stream.shuffled(reader, readers, self.seed, stats)
        done_by_slot = max(0, (self.start_batch - slot + self.workers - 1) // self.workers)
        for _ in range(done_by_slot * self.batch_size):  # resume: read, do not decode (counted before)
            next(samples)
        while True:
            raw = [next(samples) for _ in range(self.batch_size)]
            batch = self.collate([(self._decode(r[2]), r[3], _sample_id(r[0], r[1])) for r in raw])
            batch.skipped += sum(r[4] for r in raw)  # + images that did not decode (the collator's count)
            batch.damaged_shards = sum(r[5] for r in raw)
            yield batch

    def _decode(self, data: bytes) -> torch.Tensor | None:
        try:
            return load_image(io.BytesIO(data), self.stream.image_size)
        except BAD_IMAGE_ERRORS:
            return None


def _damaged(stats: ShardStats) -> int:
    return stats.shards_truncated + stats.shards_unreadable


def _sample_id(url: str, key: str) -> int:
    """A stable integer per sample (Batch.image_index), so equal images can be told apart from others."""
    return zlib.crc32(f"{url}\0{key}".encode())
