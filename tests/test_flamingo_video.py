"""Flamingo trains on clips: interleaved documents whose media are emoji-video clips, collated to
[N, T, 3, H, W] in frame order, corrupt clips skipped and counted, and the resampler's time
embeddings past frame 0 trained (images never reach them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtlab.data.interleaved import Document, InterleavedDocuments, build_documents, read_documents, write_shards
from mmtlab.data.pairs import load_image, to_float
from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece

pytest.importorskip("av")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from mmtlab.config import DataConfig
    from mmtlab.data.emoji_video import build_emoji_video
    from mmtlab.data.sources import load_split

    out = tmp_path_factory.mktemp("emoji-video")
    build_emoji_video(out, size=6, eval_size=2, num_frames=8, frame_size=32)
    return load_split(DataConfig(root=str(out)), "train")


@pytest.fixture(scope="module")
def tok(records):
    return TextTokenizer(train_wordpiece([c for r in records for c in r.captions], 200), 96)


def ramp_clip(path: Path, frames: int = 8) -> Path:
    """A clip whose frame t is a flat grey of 20 * t: frame order is readable from the pixels."""
    from mmtlab.data.formats.video import encode_mp4

    path.write_bytes(encode_mp4(np.stack([np.full((32, 32, 3), 20 * t, np.uint8) for t in range(frames)])))
    return path


def test_clip_documents_round_trip_through_shards(records, tmp_path):
    docs = build_documents(records, 12, max_chunks=3)
    # captions and qa.json's questions; a clip record has no sprite labels to classify
    assert {d.task for d in docs} == {"caption", "vqa"}
    assert all(p.suffix == ".mp4" for d in docs for p in d.images)
    write_shards(docs, tmp_path / "docs")
    back, corrupt = read_documents(tmp_path / "docs")

    def resolved(d):
        return [x.resolve() if isinstance(x, Path) else x for x in d.items]

    assert corrupt == 0 and [resolved(d) for d in back] == [resolved(d) for d in docs]
    assert [d.task for d in back] == [d.task for d in docs]


def test_collated_clips_are_frames_in_order(records, tok, tmp_path):
    from mmtlab.data.video import VideoCache

    clip = ramp_clip(tmp_path / "ramp.mp4")
    docs = [Document([clip, "output: a ramp", records[0].path, "output: a clip"]), Document([records[1].path, "x"])]
    b = InterleavedDocuments(docs, 32, max_images=4, frames=8).collator(tok)(docs)
    assert b.images.shape == (3, 8, 3, 32, 32) and b.image_counts.tolist() == [2, 1] and b.skipped == 0
    levels = (b.images[0].mean(dim=(1, 2, 3)) + 1) * 127.5
    torch.testing.assert_close(levels, torch.arange(8.0) * 20, atol=2.0, rtol=0)
    # the same decoding as every other clip reader (VideoCache: eval, the pair datasets)
    cache = VideoCache(records[:2], 32, frames=8)
    assert torch.equal(b.images[1:], cache.stack([cache.get(0), cache.get(1)]))
    # every frame_stride-th frame
    strided = InterleavedDocuments(docs[:1], 32, frames=4, frame_stride=2).collator(tok)(docs[:1])
    levels = (strided.images[0].mean(dim=(1, 2, 3)) + 1) * 127.5
    torch.testing.assert_close(levels, torch.arange(4.0) * 40, atol=2.0, rtol=0)


def test_corrupt_and_short_clips_are_skipped_and_counted(records, tok, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    short = ramp_clip(tmp_path / "short.mp4", frames=4)  # fewer frames than the resampler reads
    docs = [Document([records[0].path, "ok"]), Document([bad, "corrupt"]), Document([short, "short"])]
    b = InterleavedDocuments(docs, 32, frames=8).collator(tok)(docs)
    assert b.skipped == 2 and b.images.shape == (1, 8, 3, 32, 32) and b.tokens.shape[0] == 1
    with pytest.raises(RuntimeError, match="every document"):
        InterleavedDocuments(docs[1:], 32, frames=8).collator(tok)(docs[1:])


def test_image_documents_collate_as_before(records, tok, tmp_path):
    """Images still decode through load_image, bit for bit, to [N, 3, H, W]; a batch cannot mix."""
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)).save(paths[-1])
    docs = [Document([paths[0], "a", paths[1], "b"]), Document([paths[2], "c"])]
    b = InterleavedDocuments(docs, 32).collator(tok)(docs)
    assert torch.equal(b.images, to_float(torch.stack([load_image(p, 32) for p in paths])))
    assert b.image_counts.tolist() == [2, 1]
    mixed = [docs[1], Document([records[0].path, "clip"])]
    with pytest.raises(ValueError, match="mixes images and clips"):
        InterleavedDocuments(mixed, 32, frames=8).collator(tok)(mixed)


def test_clip_documents_train_the_time_embeddings_past_frame_zero(records, tok):
    """Images are one-frame media: only time[0] gets gradient. Clips reach time[1:] too, and one
    optimizer step moves them off their zero initialisation."""
    from test_flamingo import document, tiny_flamingo

    from mmtlab.config import TrainConfig
    from mmtlab.train.optim import build_optimizer

    docs = [Document([records[i].path, "a", records[i + 1].path, "b"]) for i in (0, 2)]
    clips = InterleavedDocuments(docs, 32, frames=8).collator(tok)(docs)
    assert clips.images.shape == (4, 8, 3, 32, 32)

    def time_grad(media, counts):
        model, _ = tiny_flamingo(gate_init=0.5)
        model.train()
        tokens = document(model)  # two documents of two media each
        logits = model(tokens, model.media_tokens(media, counts))
        target = tokens[:, 1:].clamp(max=logits.shape[-1] - 1)
        torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten()).backward()
        return model, model.resampler.time.grad

    _, g = time_grad(clips.images[:, 0], clips.image_counts)  # frame 0 alone: an image
    assert g[0].abs().sum() > 0 and torch.equal(g[1:], torch.zeros_like(g[1:]))
    model, g = time_grad(clips.images, clips.image_counts)
    assert all(g[t].abs().sum() > 0 for t in range(8)), "every frame's time embedding gets gradient"
    before = model.resampler.time.detach().clone()
    assert torch.equal(before, torch.zeros_like(before))
    build_optimizer(model, TrainConfig(lr=1e-2)).step()
    assert (model.resampler.time[1:] != 0).any(dim=1).all()
