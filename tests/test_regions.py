"""Region inputs: box overlap, proposals, the toy detector, the feature cache and the [IMG] region."""

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtlab.data import regions as regions_mod
from mmtlab.data.boxes import box_geometry, box_iot, box_iou
from mmtlab.data.detector import BACKGROUND, crop_boxes, load_detector
from mmtlab.data.regions import RegionSet, load_regions, proposal_rng, propose_boxes
from mmtlab.models.regions import RegionEmbedding, global_region_feature


def test_iou_and_iot_against_hand_computed_boxes():
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [2.0, 2.0, 4.0, 4.0]])
    target = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 10.0, 20.0]])
    iou = box_iou(regions, target)
    # [5,5,15,15] vs [0,0,10,10]: overlap 5x5 = 25, union 100 + 100 - 25.
    assert iou[1, 0].item() == pytest.approx(25 / 175)
    assert iou[0, 0].item() == 1.0
    # [0,0,10,10] vs [5,0,10,20]: overlap 5x10 = 50, union 100 + 100 - 50.
    assert iou[0, 1].item() == pytest.approx(50 / 150)
    iot = box_iot(regions, target)
    assert iot[2, 0].item() == pytest.approx(4 / 100)  # a small region inside the target covers 4%
    assert iot[0, 1].item() == pytest.approx(50 / 100)  # covers half of the 5x20 target
    big = torch.tensor([[-5.0, -5.0, 30.0, 30.0]])
    assert box_iot(big, target).tolist() == [[1.0, 1.0]]  # covering the target entirely: IoT 1, IoU < 1
    assert box_iou(big, target)[0, 0].item() == pytest.approx(100 / 35**2)


def test_geometry_is_normalised_corners_and_area():
    g = box_geometry(torch.tensor([[16.0, 8.0, 48.0, 40.0]]), 64, 64)
    torch.testing.assert_close(g, torch.tensor([[0.25, 0.125, 0.75, 0.625, 32 * 32 / 64**2]]))


def test_proposals_cover_every_gold_box_then_distractors():
    gold = np.array([[10, 10, 30, 30], [40, 5, 60, 25]])
    boxes = propose_boxes(gold, 64, 64, 8, proposal_rng("val_0000001.png", 0))
    assert boxes.shape == (8, 4)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 64).all()
    assert ((boxes[:, 2:] - boxes[:, :2]) >= regions_mod.MIN_SIDE - 1e-4).all()
    iou = box_iou(torch.from_numpy(boxes), torch.tensor(gold, dtype=torch.float32))
    assert (iou.max(0).values > 0.4).all(), "each gold box has a jittered proposal"
    again = propose_boxes(gold, 64, 64, 8, proposal_rng("val_0000001.png", 0))
    assert np.array_equal(boxes, again)
    assert not np.array_equal(boxes, propose_boxes(gold, 64, 64, 8, proposal_rng("val_0000002.png", 0)))


def test_crop_at_the_boxes_own_size_is_the_pixels():
    img = torch.randn(3, 12, 12)
    whole = crop_boxes(img, torch.tensor([[0.0, 0.0, 12.0, 12.0]]), size=12)
    torch.testing.assert_close(whole[0], img, atol=1e-5, rtol=1e-5)
    # x1, y1, x2, y2 = 2, 3, 8, 9: columns 2..7, rows 3..8 (x2/y2 exclusive).
    part = crop_boxes(img, torch.tensor([[2.0, 3.0, 8.0, 9.0]]), size=6)
    torch.testing.assert_close(part[0], img[:, 3:9, 2:8], atol=1e-5, rtol=1e-5)


def test_packaged_detector_has_no_held_out_sprite():
    from mmtlab.data.emoji_scenes import SpriteAtlas

    det = load_detector()
    atlas = SpriteAtlas.load()
    assert det.class_sprite_ids[-1] == BACKGROUND
    assert not set(det.class_sprite_ids) & set(atlas.heldout_ids())
    assert len(det.class_sprite_ids) == det.num_classes == len(atlas) - len(atlas.heldout_ids()) + 1
    feats, logits = det(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, det.feature_dim) and (feats >= 0).all() and logits.shape == (2, det.num_classes)
    assert det.digest == load_detector().digest


@dataclass
class Rec:
    path: Path
    boxes: list | None = None
    labels: list | None = None


def some_records(tiny_data, tmp_path, n=3):
    from mmtlab.data.formats.karpathy import read_karpathy

    src = read_karpathy(next(tiny_data.glob("dataset_*.json")), split="val")[:n]
    out = []
    for r in src:
        dst = tmp_path / "imgs" / r.path.name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(r.path, dst)
        out.append(Rec(dst, r.boxes, r.labels))
    return out


def test_region_cache_round_trip_and_invalidation(tiny_data, tmp_path, monkeypatch):
    records = some_records(tiny_data, tmp_path)
    cache = tmp_path / "cache"
    first = load_regions(records, cache_dir=cache, progress=False)
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert first.features.shape == (3, 8, first.feature_dim) and first.valid.all() and first.ok.all()

    def no_extraction(*a, **k):
        raise AssertionError("a cached split must not be recomputed")

    monkeypatch.setattr(regions_mod, "extract_regions", no_extraction)
    second = load_regions(records, cache_dir=cache, progress=False)
    for name in ("features", "boxes", "valid", "gold", "image_wh", "classifier_weight", "mean_feature"):
        assert torch.equal(getattr(first, name), getattr(second, name)), name
    monkeypatch.undo()

    # A changed image (same name, same boxes) and a changed proposal seed get their own cache entries.
    from PIL import Image

    Image.new("RGB", (64, 64), "red").save(records[0].path)
    changed = load_regions(records, cache_dir=cache, progress=False)
    assert changed.key != first.key and not torch.equal(changed.features[0], first.features[0])
    assert torch.equal(changed.features[1:], first.features[1:])
    assert load_regions(records, cache_dir=cache, seed=1, progress=False).key != changed.key
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_gold_labels_and_undecodable_images(tiny_data, tmp_path):
    records = some_records(tiny_data, tmp_path)
    records[1].path.write_bytes(b"not a png")
    rs = load_regions(records, cache_dir=tmp_path / "cache", progress=False)
    assert rs.ok.tolist() == [True, False, True] and rs.bad == {1}
    assert rs.get(1) is None and not rs.valid[1].any()
    for i in (0, 2):
        iou = box_iou(rs.boxes[i], torch.tensor(records[i].boxes, dtype=torch.float32))
        best = iou.max(1)
        want = torch.where(best.values >= 0.5, torch.tensor(records[i].labels)[best.indices], -1)
        assert torch.equal(rs.gold[i], want)
        assert (rs.gold[i] >= 0).sum() >= 1  # the jittered gold boxes keep their objects
    batch = rs.stack([0, 2])
    assert batch.features.shape[0] == 2 and batch.geometry.shape == (2, 8, 5)
    torch.testing.assert_close(
        batch.geometry[..., 4],
        (batch.boxes[..., 2] - batch.boxes[..., 0]) * (batch.boxes[..., 3] - batch.boxes[..., 1]) / 64**2,
    )
    assert batch.detector_logits().shape == (2, 8, rs.num_classes)


def test_global_region_is_the_mean_of_visible_regions(tiny_data, tmp_path):
    rs = load_regions(some_records(tiny_data, tmp_path), cache_dir=tmp_path / "cache", progress=False)
    batch = rs.stack([0, 1])
    mask = batch.mask.clone()
    mask[0, 5:] = False  # padding
    masked = torch.zeros_like(mask)
    masked[0, 0] = True  # hidden by MRM
    b = replace(batch, mask=mask, masked=masked)
    g = global_region_feature(b)
    torch.testing.assert_close(g[0], batch.features[0, 1:5].mean(0))
    torch.testing.assert_close(g[1], batch.features[1].mean(0))
    # An ablation that replaces region features changes [IMG] accordingly (no stale global feature).
    ablated = replace(batch, features=rs.mean_feature.expand_as(batch.features).clone())
    torch.testing.assert_close(global_region_feature(ablated), rs.mean_feature.expand(2, -1))
    emb = RegionEmbedding(rs.feature_dim, 16)
    x, pad = emb(b)
    assert x.shape == (2, 9, 16) and pad.shape == (2, 9) and pad[:, 0].all() and not pad[0, 6:].any()
    assert emb(batch)[1] is None


def test_region_set_subset_and_save_load(tiny_data, tmp_path):
    rs = load_regions(some_records(tiny_data, tmp_path), cache_dir=tmp_path / "cache", progress=False)
    sub = rs.subset([2, 0])
    assert torch.equal(sub.features[0], rs.features[2]) and torch.equal(sub.mean_feature, rs.mean_feature)
    rs.save(tmp_path / "x.safetensors")
    back = RegionSet.load(tmp_path / "x.safetensors")
    assert back.key == rs.key and torch.equal(back.valid, rs.valid) and back.valid.dtype == torch.bool


def test_training_batches_of_regions_belong_to_their_pairs_images(tiny_data, tmp_path):
    """Through the shuffled sampler, the region cache and the collator, pair k's regions are those
    of the image its caption describes: equal to the features extracted from that image file on
    its own, with gold sprites among that record's labels. A misaligned cache would leave MLM
    learning while ITM and retrieval sit at chance, the symptom of issue 4b."""
    from conftest import tiny_run_config

    from mmtlab.config import load_config
    from mmtlab.data.loader import training_batches, training_dataset
    from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece

    raw = tiny_run_config(tiny_data)
    raw["model"]["image"] = {"input": "regions"}
    raw["data"]["regions"] = {"cache_dir": str(tmp_path / "cache")}
    cfg = load_config(raw)
    pairs = training_dataset(cfg)
    tok = TextTokenizer(train_wordpiece(pairs.captions(), 300), cfg.model.text.max_len)
    batches = training_batches(pairs, cfg, tok)
    detector = load_detector()
    for _ in range(2):
        b = next(batches)
        assert not torch.equal(b.image_index, b.image_index.sort().values), "the sampler shuffles"
        for k in range(len(b)):
            rec = pairs.records[int(b.image_index[k])]
            alone = regions_mod.extract_regions([rec], detector, b.images.features.shape[1], progress=False)
            torch.testing.assert_close(b.images.features[k], alone.features[0])
            torch.testing.assert_close(b.images.boxes[k], alone.boxes[0])
            gold = b.images.gold[k]
            assert set(gold[gold >= 0].tolist()) <= set(rec.labels)
            want, _ = tok([c for c in rec.captions if c.strip()])
            n = int(b.text_mask[k].sum())
            assert any(torch.equal(b.tokens[k, :n], w[w != tok.pad_id]) for w in want)
