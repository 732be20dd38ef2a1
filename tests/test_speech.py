"""Spoken emoji-scenes (shipped assets, codec, first-use rendering) and the speech encoder."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import mmtlab
from mmtlab.config import DataConfig, SpeechConfig, load_config
from mmtlab.data.speech import SHIPPED, SpokenSet, SpokenSetError, build_spoken_set, load_spoken, render
from mmtlab.data.speech import spoken as spoken_module
from mmtlab.data.speech.spoken import mulaw_decode, mulaw_encode
from mmtlab.models.speech import SpeechEmbedding
from mmtlab.train.checkpoint import latest_checkpoint
from mmtlab.train.loop import train

TINY_SPEECH = {
    "conv_layers": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
    "conv_pos_groups": 4,
    "max_seconds": 1.0,
}


def test_shipped_set_is_small_complete_and_decodes():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir()}
    assert sum(files.values()) <= 5_000_000 and max(files.values()) <= 8_000_000
    spoken = SpokenSet(SHIPPED)
    assert spoken.sample_rate == 16000
    keywords = spoken.of_kind("keyword")
    assert len(keywords) == len(render.KEYWORDS) * len(render.VOICES) * 4  # 2 speeds x 2 pitches
    assert {u["keyword"] for u in keywords} == set(render.KEYWORDS)
    assert spoken.n_captions >= 50
    for u in [keywords[0], spoken.of_kind("caption")[0]]:
        wave = spoken.audio(u)
        assert wave.dtype == np.float32 and len(wave) == u["samples"]
        assert 0.2 < len(wave) / 16000 < 8 and 0.5 < np.abs(wave).max() <= 1.0


def test_mulaw_roundtrip_keeps_speech_quality():
    t = np.arange(16000) / 16000
    x = (0.5 * np.sin(2 * np.pi * 220 * t) * np.exp(-3 * t)).astype(np.float32)
    y = mulaw_decode(mulaw_encode(x))
    snr = 10 * math.log10(float((x**2).sum() / ((x - y) ** 2).sum()))
    assert snr > 30


def test_corrupt_or_missing_spoken_set_is_a_clear_error(tmp_path):
    with pytest.raises(SpokenSetError, match="missing manifest.json"):
        SpokenSet(tmp_path)
    (tmp_path / "manifest.json").write_text((SHIPPED / "manifest.json").read_text())
    (tmp_path / "keywords.ulaw.xz").write_bytes(b"not xz at all")
    spoken = SpokenSet(tmp_path)
    with pytest.raises(SpokenSetError, match=r"keywords\.ulaw\.xz: corrupt"):
        spoken.audio(spoken.of_kind("keyword")[0])


def test_conv_feature_encoder_frame_arithmetic():
    emb = SpeechEmbedding(SpeechConfig(), 32)
    for n in (400, 719, 720, 8000, 16000, 16123):
        frames = emb.features(torch.randn(1, n)).shape[1]
        # wav2vec 2.0's stack: a 400-sample (25 ms) receptive field every 320 samples (20 ms)
        assert frames == int(emb.features.output_lengths(torch.tensor([n]))) == (n - 400) // 320 + 1
    assert emb(torch.randn(2, 16000)).shape == (2, 49, 32)  # 20 ms frames
    mask = torch.ones(2, 16000, dtype=torch.bool)
    mask[1, 8000:] = False
    assert emb.frame_mask(mask, 49).sum(1).tolist() == [49, 24]


def speech_run(tmp_path, **train_cfg):
    return load_config(
        {
            "data": {"root": str(tmp_path / "no-images-needed")},
            "tokenizer": {"vocab_size": 200},
            "model": {
                "arch": "data2vec",
                "width": 32,
                "depth": 2,
                "heads": 2,
                "speech": TINY_SPEECH,
                "data2vec": {"modalities": ["speech"], "speech": {"decoder_groups": 4}},
            },
            "objectives": {"data2vec": 1.0},
            "train": {"steps": 4, "batch_size": 8, "warmup_steps": 1, "checkpoint_every": 2, **train_cfg},
        }
    )


def test_speech_data2vec_trains_from_the_shipped_set_and_resumes_exactly(tmp_path):
    cfg = speech_run(tmp_path)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", stop_after=2, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # crops, masks and the EMA teacher replay
    model = mmtlab.load(tmp_path / "whole")
    audio = torch.randn(1, 16000)
    assert model(audio=audio)["speech"].shape == (1, 49, 32)


def test_more_captions_than_shipped_without_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(render, "espeak_path", lambda: None)
    data = DataConfig(root=str(tmp_path / "emoji-scenes"))
    assert load_spoken(data).root == SHIPPED
    with pytest.raises(render.EspeakMissing, match=r"apt-get install espeak-ng.*speech_captions <= \d+"):
        load_spoken(data, captions=1000)
    cfg = speech_run(tmp_path, steps=1)
    cfg.data.speech_captions = 999
    with pytest.raises(render.EspeakMissing, match="speech_captions"):
        train(cfg, tmp_path / "run", progress=False)


@pytest.mark.skipif(render.espeak_path() is None, reason="espeak-ng is not installed")
def test_render_with_espeak(tiny_data, tmp_path, monkeypatch):
    ann = next(tiny_data.glob("dataset_*.json"))
    summary = build_spoken_set(tmp_path / "spoken", ann, captions=3, keywords=["cat"])
    assert summary == {"utterances": 3 + 16, "skipped_empty": 0}
    spoken = SpokenSet(tmp_path / "spoken")
    manifest = json.loads((tmp_path / "spoken" / "manifest.json").read_text())
    assert manifest["espeak_ng"] and manifest["source"]["split"] == "pretrain"
    caps = spoken.of_kind("caption")
    assert all(c["style"] in ("alt_text", "descriptive") for c in caps)
    assert all(len(spoken.audio(u)) > 1600 for u in spoken.utterances)

    # First use: asking for more captions than ship renders them once into <data.root>-speech.
    monkeypatch.setattr(spoken_module, "SHIPPED", tmp_path / "spoken")  # "ships" 3 captions
    monkeypatch.setattr(render, "KEYWORDS", ("cat",))
    data = DataConfig(root=str(tiny_data))
    assert load_spoken(data, captions=3).root == tmp_path / "spoken"
    more = load_spoken(data, captions=5)
    assert more.root == tiny_data.parent / f"{tiny_data.name}-speech" and more.n_captions == 5
    stamp = (more.root / "manifest.json").stat().st_mtime_ns
    assert load_spoken(data, captions=4).root == more.root
    assert (more.root / "manifest.json").stat().st_mtime_ns == stamp  # rendered once
