"""Pretraining objectives of the BERT-style models: MRM variants, ITM (random / hard negatives,
MLM and MRM dropped on negative pairs), contrastive ITM with many candidates."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmtlab.config import CONFIG_DIR, ConfigError, load_config
from mmtlab.data.boxes import box_geometry
from mmtlab.data.pairs import Batch
from mmtlab.data.regions import Regions
from mmtlab.models import build_model
from mmtlab.objectives import Objectives, StepContext, mask_regions, pass_plan
from mmtlab.objectives.itm import choose_candidates, itm_loss, sample_pairing
from mmtlab.objectives.mlm import IGNORE
from mmtlab.objectives.mrm import mrm_cls_loss, mrm_kl_loss, mrm_regress_loss

FEAT, CLASSES, VOCAB = 8, 5, 50


def region_config(objectives, layout="merged", **model):
    return load_config(
        {
            "model": {
                "layout": layout,
                "width": 32,
                "depth": 2,
                "heads": 4,
                "embed_dim": 16,
                "image": {"input": "regions", "region_dim": FEAT, "region_classes": CLASSES},
                "text": {"vocab_size": VOCAB, "max_len": 16},
                **model,
            },
            "objectives": objectives,
        }
    )


def random_regions(b, r=6, generator=None, padded=True):
    g = generator or torch.Generator().manual_seed(0)
    xy = torch.rand(b, r, 2, generator=g) * 40
    wh = torch.rand(b, r, 2, generator=g) * 20 + 4
    boxes = torch.cat([xy, xy + wh], -1)
    mask = torch.ones(b, r, dtype=torch.bool)
    if padded:
        mask[0, -2:] = False
    feats = torch.rand(b, r, FEAT, generator=g) * mask[..., None]
    return Regions(
        features=feats,
        geometry=box_geometry(boxes, 64, 64),
        mask=mask,
        boxes=boxes,
        gold=torch.full((b, r), -1),
        classifier_weight=torch.randn(CLASSES, FEAT, generator=g),
        classifier_bias=torch.randn(CLASSES, generator=g),
    )


def random_batch(b=8, generator=None):
    g = generator or torch.Generator().manual_seed(0)
    tokens = torch.randint(5, VOCAB, (b, 10), generator=g)
    tokens[:, 0], tokens[:, -1] = 2, 3
    mask = torch.ones(b, 10, dtype=torch.bool)
    return Batch(random_regions(b, generator=g), tokens, mask, torch.arange(b))


# ------------------------------------------------------------------------------ region masking


def test_mrm_masks_only_the_chosen_regions():
    regions = random_regions(400, generator=torch.Generator().manual_seed(3))
    eligible = torch.arange(400) % 2 == 0
    masked, chosen = mask_regions(regions, 0.15, torch.Generator().manual_seed(0), eligible)
    assert not (chosen & ~regions.mask).any(), "padding is never chosen"
    assert not chosen[~eligible].any(), "ineligible (negative-pair) images are left alone"
    assert abs(chosen[eligible].sum().item() / regions.mask[eligible].sum().item() - 0.15) < 0.02
    assert (masked.features[chosen] == 0).all()
    assert torch.equal(masked.features[~chosen], regions.features[~chosen])
    assert torch.equal(masked.geometry, regions.geometry) and torch.equal(masked.masked, chosen)


# ------------------------------------------------------------------- losses vs reference formulas


def test_mrm_losses_match_reference_formulas():
    g = torch.Generator().manual_seed(0)
    logits, det = (
        torch.randn(4, CLASSES, generator=g, dtype=torch.float64),
        torch.randn(4, CLASSES, generator=g, dtype=torch.float64),
    )
    p_det = np.exp(det.numpy()) / np.exp(det.numpy()).sum(1, keepdims=True)
    logq = logits.numpy() - np.log(np.exp(logits.numpy()).sum(1, keepdims=True))
    kl = sum(sum(p_det[n, c] * (math.log(p_det[n, c]) - logq[n, c]) for c in range(CLASSES)) for n in range(4)) / 4
    assert mrm_kl_loss(logits, det).item() == pytest.approx(kl, rel=1e-6)
    per_region = [sum(p_det[n, c] * (math.log(p_det[n, c]) - logq[n, c]) for c in range(CLASSES)) for n in range(4)]
    assert mrm_kl_loss(logits, det, reduction="none").tolist() == pytest.approx(per_region, rel=1e-6)
    ce = -sum(logq[n, int(np.argmax(p_det[n]))] for n in range(4)) / 4
    assert mrm_cls_loss(logits, det).item() == pytest.approx(ce, rel=1e-6)
    pred, target = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g) * 3
    d = (pred - target).numpy()
    assert mrm_regress_loss(pred, target, "mse").item() == pytest.approx((d**2).mean(), rel=1e-5)
    huber = np.where(np.abs(d) < 1, 0.5 * d**2, np.abs(d) - 0.5).mean()
    assert mrm_regress_loss(pred, target, "huber").item() == pytest.approx(huber, rel=1e-5)


def test_itm_loss_is_binary_cross_entropy():
    logits, match = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([True, False, False])
    want = (
        -(
            math.log(1 / (1 + math.exp(-2)))
            + math.log(1 - 1 / (1 + math.exp(1)))
            + math.log(1 - 1 / (1 + math.exp(-0.5)))
        )
        / 3
    )
    assert itm_loss(logits, match).item() == pytest.approx(want, rel=1e-6)


# ------------------------------------------------------------------------------------ negatives


def test_random_negatives_are_half_and_never_the_same_image():
    image_index = torch.arange(2000) // 2  # two captions per image: a caption of the same image is no negative
    p = sample_pairing(image_index, torch.Generator().manual_seed(0))
    neg = ~p.is_match
    assert abs(neg.float().mean().item() - 0.5) < 0.03
    assert (image_index[p.text_index[neg]] != image_index[neg]).all()
    assert torch.equal(p.text_index[~neg], torch.arange(2000)[~neg])


def test_hard_negatives_follow_the_contrastive_similarity():
    b = 6
    sim = torch.full((b, b), -50.0)
    sim[torch.arange(b), (torch.arange(b) + 1) % b] = 50.0  # caption i+1 is by far the most similar
    p = sample_pairing(torch.arange(b), torch.Generator().manual_seed(0), sim, negative_prob=1.0)
    assert not p.is_match.any()
    assert torch.equal(p.text_index, (torch.arange(b) + 1) % b)


def test_candidates_start_with_the_own_caption_and_skip_the_same_image():
    image_index = torch.tensor([0, 1, 2, 3])
    pool_owner = torch.tensor([0, 1, 2, 3, 1, 7, 8])  # batch captions, then a bank: one of them is image 1's
    index, valid = choose_candidates(image_index, pool_owner, 5, torch.Generator().manual_seed(0))
    assert torch.equal(index[:, 0], torch.arange(4)) and valid.all()
    for i in range(4):
        assert (pool_owner[index[i, 1:]] != image_index[i]).all()
    sim = torch.arange(7.0).expand(4, 7)  # hard: the most similar allowed captions, best first
    index, _ = choose_candidates(image_index, pool_owner, 3, None, sim)
    assert index[0].tolist() == [0, 6, 5]
    index, valid = choose_candidates(image_index[:2], pool_owner[:2], 4, None)
    assert valid.tolist() == [[True, True, False, False], [True, True, False, False]]


# -------------------------------------------------------------- ITM negatives drop MLM and MRM


def test_itm_negatives_get_no_mlm_or_mrm():
    cfg = region_config({"mlm": 1.0, "mrm_kl": 1.0, "itm": 1.0})
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = random_batch(16)
    batch.images.features.requires_grad_(True)
    objectives = Objectives(cfg)
    step = StepContext(model, batch, torch.Generator().manual_seed(1), plan=objectives.plan)
    joint = step.masked
    neg = ~joint.is_match
    assert neg.any() and joint.is_match.any()
    assert (joint.labels[neg] == IGNORE).all(), "no MLM labels on negative pairs"
    assert not joint.region_chosen[neg].any(), "no MRM targets in negative pairs"
    pair_tokens = batch.tokens[step.pairing.text_index]
    # Negatives are masked like positives, or ITM could classify a pair by its [MASK] tokens alone.
    assert not torch.equal(joint.inputs[neg], pair_tokens[neg]), "negative captions are masked too"
    assert (joint.labels[joint.is_match] != IGNORE).any() and joint.region_chosen[joint.is_match].any()
    # Behaviour: the MLM and MRM losses do not depend on negative pairs' images at all.
    loss = objectives.losses["mlm"](step) + objectives.losses["mrm_kl"](step)
    (grad,) = torch.autograd.grad(loss, batch.images.features)
    assert torch.count_nonzero(grad[neg]) == 0
    assert grad[joint.is_match].abs().sum() > 0


def test_without_itm_every_pair_is_positive_and_mlm_unchanged():
    cfg = region_config({"mlm": 1.0})
    model = build_model(cfg)
    step = StepContext(model, random_batch(), torch.Generator().manual_seed(0), plan=pass_plan(cfg))
    assert step.masked.is_match.all() and step.masked.region_chosen is None


def test_every_objective_trains_one_step_and_itm_contrastive_uses_a_bank():
    objectives = {
        "contrastive": 1.0,
        "mlm": 1.0,
        "mrm_cls": 1.0,
        "mrm_kl": 1.0,
        "mrm_regress": {"loss": "huber"},
        "itm": {"negatives": "hard"},
        "itm_contrastive": {"candidates": 20, "negatives": "hard"},
    }
    cfg = region_config(objectives, layout="mixed", layout_args={"k": 1})
    torch.manual_seed(0)
    model = build_model(cfg)
    obj = Objectives(cfg)

    class Bank:
        calls = []

        def sample(self, n, generator):
            self.calls.append(n)
            b = random_batch(n, torch.Generator().manual_seed(5))
            return b.tokens, b.text_mask, b.image_index + 100

    obj.bank = Bank()
    total, parts = obj(model, random_batch(16), torch.Generator().manual_seed(0))
    assert set(parts) == set(objectives) and all(torch.isfinite(v) for v in parts.values())
    assert Bank.calls == [4], "20 candidates from a batch of 16 need 4 bank captions"
    total.backward()
    for head in ("itm", "mrm", "mlm", "contrastive"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, head).parameters()), head


def test_itm_contrastive_logits_equal_per_pair_scores():
    cfg = region_config({"itm_contrastive": {"candidates": 4}}, layout="coattention", layout_args={"text_layers": 1})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = random_batch(4)
    step = StepContext(model, batch, torch.Generator().manual_seed(0), plan=pass_plan(cfg))
    c = step.itm_candidates
    text = model.encode_unpaired(tokens=c.tokens, text_mask=c.text_mask)["text"]
    image = model.encode_unpaired(images=batch.images)["image"]
    got = model.pair_logits(text, image, c.index.flatten(), torch.arange(4).repeat_interleave(4)).view(4, 4)
    for i in range(4):
        for n in range(4):
            j = c.index[i, n]
            want = model.score(batch.images[torch.tensor([i])], c.tokens[j : j + 1], c.text_mask[j : j + 1])
            torch.testing.assert_close(got[i, n], want[0], atol=1e-5, rtol=1e-5)


def test_score_is_the_itm_logit_for_cross_encoders():
    cfg = region_config({"itm": 1.0})
    model = build_model(cfg).eval()
    b = random_batch(3)
    states = model(images=b.images, tokens=b.tokens, text_mask=b.text_mask)
    want = model.itm_logits(states["text"], states["image"], b.text_mask, model.image_key_mask(b.images))
    torch.testing.assert_close(model.score(b.images, b.tokens, b.text_mask), want)
    assert F.sigmoid(want).shape == (3,)


@pytest.mark.parametrize(
    "objectives, image_input, message",
    [
        ({"mrm_kl": 1.0}, "patches", "model.image.input: regions"),
        ({"itm": {"negatives": "hard"}}, "regions", "add the contrastive objective"),
        ({"itm": {"loss": "mse"}}, "regions", "objectives.itm.loss: only applies to mrm_regress"),
        ({"mrm_kl": {"mask_prob": 0.1}, "mrm_cls": {"mask_prob": 0.2}}, "regions", "same mask_prob"),
        ({"mlm": {"candidates": 3}}, "regions", "only applies to itm_contrastive"),
    ],
)
def test_objective_config_errors_name_the_field(objectives, image_input, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"model": {"image": {"input": image_input}}, "objectives": objectives})


def test_heads_follow_the_objectives():
    cfg = region_config({"mrm_regress": 1.0, "itm_contrastive": 1.0})
    assert cfg.model.outputs == ["mrm", "itm"]


def test_region_run_with_every_loss_resumes_exactly(tiny_data, tmp_path):
    from conftest import tiny_run_config
    from safetensors.torch import load_file

    from mmtlab.train.checkpoint import latest_checkpoint
    from mmtlab.train.loop import train

    raw = tiny_run_config(tiny_data)
    raw["model"] |= {"layout": "coattention", "layout_args": {"text_layers": 1}, "depth": 1, "dropout": 0.1}
    raw["model"]["image"] = {"input": "regions"}
    raw["data"]["regions"] = {"cache_dir": str(tmp_path / "cache")}
    raw["objectives"] = {
        "contrastive": 1.0,
        "mlm": 1.0,
        "mrm_kl": 1.0,
        "itm": {"negatives": "hard"},
        "itm_contrastive": {"candidates": 10},  # > batch of 8: draws from the caption bank
    }
    raw["train"]["batch_size"] = 8
    cfg = load_config(raw)
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", stop_after=4, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", [p.stem for p in sorted((CONFIG_DIR / "models").glob("*-regions.yaml"))])
def test_shipped_region_models_train(name, tiny_data, tmp_path_factory):
    from conftest import tiny_run_config

    from mmtlab.train.loop import train

    raw = tiny_run_config(tiny_data, steps=2, batch_size=8, checkpoint_every=2)
    raw["model"] = {"base": name, "width": 32, "heads": 2}
    raw["data"]["regions"] = {"cache_dir": str(tmp_path_factory.getbasetemp() / "region-cache")}
    raw["objectives"] = {"mlm": 1.0, "itm": 1.0, "mrm_kl": 1.0}
    run = tmp_path_factory.mktemp(name)
    result = train(load_config(raw), run, progress=False)
    assert result.steps == 2 and math.isfinite(result.final_loss)
