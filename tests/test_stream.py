"""Streaming WebDataset training data: splitting per rank and worker, resampling, shuffling,
workers, skip-and-count of damage, and resume."""

import itertools
import json
import random

import pytest
import torch
from conftest import tiny_run_config
from torch.utils.data import DataLoader

from mmtlab.config import ConfigError, load_config
from mmtlab.data.formats.webdataset import ShardReader, ShardStats, write_shards
from mmtlab.data.stream import ShardStream, shuffle_buffer
from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece


@pytest.fixture(scope="module")
def shards(tiny_data, tmp_path_factory):
    """tiny_data's 256 pretraining samples re-sharded into 4 shards of 64 (emoji-scenes' own export)."""
    samples = [
        (s["key"], {"png": s["image"], "txt": s["captions"][0], "json": json.dumps(s["meta"])})
        for s in ShardReader(sorted((tiny_data / "shards").glob("pretrain-*.tar")), decode=False)
    ]
    assert len(samples) == 256
    out = tmp_path_factory.mktemp("shards")
    return write_shards(out, "train", samples, shard_size=64)


@pytest.fixture(scope="module")
def tokenizer(shards):
    return TextTokenizer(train_wordpiece(ShardStream(shards, 64).captions(), 300), 24)


def keys_of(stream, reader, readers, n, seed=0):
    it = stream.read(reader, readers, seed, ShardStats())
    return [next(it)[1] for _ in range(n)]


def test_readers_split_the_shards_of_an_epoch(shards):
    stream = ShardStream(shards, 64)
    # 2 ranks x 2 workers = 4 readers over 4 shards: each reads one shard per epoch, together all
    per_reader = [keys_of(stream, r, 4, 64) for r in range(4)]
    flat = [k for keys in per_reader for k in keys]
    assert len(set(flat)) == 256
    # the next epoch reshuffles which reader gets which shard, and still covers everything
    second = [keys_of(stream, r, 4, 128)[64:] for r in range(4)]
    assert len({k for keys in second for k in keys}) == 256
    assert [k[:1] for k in second] != [k[:1] for k in per_reader]
    with pytest.raises(ValueError, match="resampled"):
        stream.batches(None, 8, world=2, workers=3)  # 6 readers cannot share 4 shards


def test_resampling_draws_shards_with_replacement(shards):
    stream = ShardStream(shards, 64, resampled=True)
    a = keys_of(stream, 5, 8, 320)  # more readers than shards is fine
    assert a == keys_of(stream, 5, 8, 320)  # seeded
    assert a != keys_of(stream, 6, 8, 320)
    shard_of = {k: i for i, path in enumerate(shards) for k in (s["key"] for s in ShardReader([path], decode=False))}
    runs = [shard_of[k] for k in a[::64]]
    assert len(runs) == 5 and len(set(runs)) < 5  # 5 draws from 4 shards: some shard came twice


def test_shuffle_buffer_is_a_seeded_permutation():
    items = list(range(100))
    out = list(shuffle_buffer(iter(items), 16, random.Random(0)))
    assert sorted(out) == items and out != items
    assert out == list(shuffle_buffer(iter(items), 16, random.Random(0)))
    assert list(shuffle_buffer(iter(items), 0, random.Random(0))) == items
    # a buffer of 16 cannot move a sample earlier than 16 places before its position
    assert all(out.index(i) >= i - 16 for i in items)


def collect(stream, tokenizer, n, **kw):
    loader = DataLoader(stream.batches(tokenizer, 8, **kw), batch_size=None, num_workers=kw.get("workers", 0))
    it = iter(loader)
    return [next(it) for _ in range(n)]


def same_batch(a, b):
    return torch.equal(a.images, b.images) and torch.equal(a.tokens, b.tokens) and a.skipped == b.skipped


def test_workers_and_exact_resume(shards, tokenizer):
    stream = ShardStream(shards, 64, buffer=32)
    whole = collect(stream, tokenizer, 7, workers=2)
    assert all(b.images.shape == (8, 3, 64, 64) for b in whole)
    # batches alternate between the two workers' readers, which read different shards
    ids = [set(b.image_index.tolist()) for b in whole]
    assert not ids[0] & ids[1]
    # resuming after 3 micro-batches (an odd number: the worker slots rotate) gives batches 3..6
    resumed = collect(stream, tokenizer, 4, workers=2, start_batch=3)
    assert all(same_batch(a, b) for a, b in zip(whole[3:], resumed))
    # and with one rank of two, the other rank's batches are disjoint from it
    other = collect(stream, tokenizer, 2, workers=2, rank=1, world=2)
    mine = collect(stream, tokenizer, 2, workers=2, rank=0, world=2)
    assert not {i for b in other for i in b.image_index.tolist()} & {i for b in mine for i in b.image_index.tolist()}


def test_corrupt_samples_and_truncated_shards_are_skipped_and_counted(shards, tokenizer, tmp_path):
    samples = [(s["key"], s) for s in ShardReader(shards[:2], decode=False)]
    members = []
    for i, (key, s) in enumerate(samples):
        png = b"not a png at all" if i == 3 else s["image"]
        caption = "" if i == 5 else s["captions"][0]
        members.append((key, {"png": png, "txt": caption}))
    good, cut = write_shards(tmp_path, "bad", members, shard_size=64)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])  # cut inside a member
    stream = ShardStream([good, cut], 64, buffer=0)
    batches = collect(stream, tokenizer, 12)
    assert sum(b.skipped for b in batches[:8]) == 2  # the bad image and the empty caption of shard 0
    assert sum(len(b) for b in batches[:8]) == 8 * 8 - 1  # the bad image left its batch one short
    assert sum(b.damaged_shards for b in batches) >= 1  # the cut shard, met once per epoch
    assert all(len(b) > 0 for b in batches)  # and training data keeps coming


def stream_run(shards, **train):
    raw = tiny_run_config(shards[0].parent, steps=4, batch_size=8, checkpoint_every=2, threads=2, **train)
    raw["data"] = {"format": "webdataset", "shards": "::".join(str(s) for s in shards), "num_workers": 2}
    raw["data"]["shuffle_buffer"] = 32
    return load_config(raw)


def test_streamed_training_resumes_exactly(shards, tmp_path):
    from safetensors.torch import load_file

    from mmtlab.train.checkpoint import latest_checkpoint
    from mmtlab.train.loop import train

    cfg = stream_run(shards)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", stop_after=1, progress=False)  # stops after an odd number of batches
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((latest_checkpoint(tmp_path / "split") / "state.json").read_text())
    assert state["stream"] == {"world": 1, "workers": 2}


def test_stream_config_errors(shards):
    with pytest.raises(ConfigError, match="max_train_pairs"):
        load_config({"data": {"format": "webdataset", "max_train_pairs": 10}})
    from mmtlab.data.sources import DatasetNotFound
    from mmtlab.data.stream import shard_urls

    with pytest.raises(DatasetNotFound, match="data.shards"):
        shard_urls(load_config({"data": {"format": "webdataset", "shards": str(shards[0]) + "::/nope/x.tar"}}).data)


def test_img2dataset_style_shards(tmp_path, tokenizer):
    """img2dataset's webdataset output: {key}.jpg, {key}.txt, {key}.json with its own metadata."""
    import io

    from PIL import Image

    samples = []
    for i in range(6):
        buf = io.BytesIO()
        Image.new("RGB", (80, 60), (40 * i, 100, 200)).save(buf, format="JPEG")
        meta = {"url": f"http://example.com/{i}.jpg", "caption": f"a photo number {i}", "status": "success"}
        samples.append((f"{i:09d}", {"jpg": buf.getvalue(), "txt": f"a photo number {i}", "json": json.dumps(meta)}))
    (shard,) = write_shards(tmp_path, "00000", samples, shard_size=6)
    (batch,) = collect(ShardStream([shard], 64, buffer=0), tokenizer, 1)
    assert batch.images.shape == (8, 3, 64, 64)  # resized and centre-cropped like files on disk
    assert batch.skipped == 0


def test_stream_resume_modes(shards, tokenizer):
    from mmtlab.data.loader import training_batches

    cfg = stream_run(shards)
    cfg.data.num_workers = 0
    stream = ShardStream.from_config(cfg.data, 64, cfg.seed)
    first = list(itertools.islice(training_batches(stream, cfg, tokenizer), 3))
    same = {"stream": {"world": 1, "workers": 0}}
    exact = next(training_batches(stream, cfg, tokenizer, start_sample=16, resume_state=same))
    assert same_batch(exact, first[2])  # 16 samples = 2 batches of 8 consumed: the third comes next
    with pytest.warns(UserWarning, match="reseeded"):  # other readers than the interrupted run's
        moved = next(training_batches(stream, cfg, tokenizer, start_sample=16, resume_state={"stream": {"world": 2}}))
    cfg.data.stream_resume = "reseed"
    reseeded = next(training_batches(stream, cfg, tokenizer, start_sample=16, resume_state=same))
    assert same_batch(moved, reseeded) and not same_batch(reseeded, first[2])
