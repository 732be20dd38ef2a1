"""Sigmoid / focal contrastive losses, z-loss and the caption labels against independent formulas."""

import math

import pytest
import torch

from mmtlab.config import load_config
from mmtlab.models import build_model
from mmtlab.objectives import (
    FocalContrastive,
    build_objectives,
    caption_loss,
    focal_sigmoid_loss,
    next_token_labels,
    sigmoid_loss,
    z_loss,
)
from mmtlab.objectives.caption import IGNORE


def logits(n=6, seed=0, scale=4.0):
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def reference_focal(x, gamma):
    """Element by element: -(1 - p_t)^gamma log p_t, p_t the probability of the right label."""
    n = x.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            p = 1 / (1 + math.exp(-x[i, j].item()))
            p_t = p if i == j else 1 - p
            total += -((1 - p_t) ** gamma) * math.log(p_t)
    return total / n


def test_focal_with_gamma_zero_equals_the_sigmoid_loss():
    x = logits()
    torch.testing.assert_close(focal_sigmoid_loss(x, 0.0), sigmoid_loss(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_and_sigmoid_match_the_element_by_element_formula(gamma):
    x = logits(seed=int(gamma))
    assert focal_sigmoid_loss(x, gamma).item() == pytest.approx(reference_focal(x, gamma), rel=1e-9)
    # SigLIP, Zhai et al. 2023 Algorithm 1: -sum log sigmoid(z * logits) / n, z = 2 * eye - 1
    z = 2 * torch.eye(6, dtype=torch.float64) - 1
    assert sigmoid_loss(x).item() == pytest.approx(-torch.log(torch.sigmoid(z * x)).sum().item() / 6, rel=1e-9)


def test_focal_loss_is_stable_for_huge_logits_and_down_weights_easy_pairs():
    x = torch.tensor([[80.0, -90.0], [-70.0, 60.0]])  # every pair confidently right
    assert torch.isfinite(focal_sigmoid_loss(x, 2.0)) and focal_sigmoid_loss(x, 2.0) < 1e-30
    y = logits()
    assert focal_sigmoid_loss(y, 2.0) < focal_sigmoid_loss(y, 1.0) < sigmoid_loss(y)


def test_z_loss_is_the_squared_log_normaliser_of_rows_and_columns():
    x = logits(4)
    rows = sum(math.log(sum(math.exp(v) for v in x[i].tolist())) ** 2 for i in range(4)) / 4
    cols = sum(math.log(sum(math.exp(v) for v in x[:, j].tolist())) ** 2 for j in range(4)) / 4
    assert z_loss(x).item() == pytest.approx((rows + cols) / 2, rel=1e-9)


def test_sigmoid_losses_get_a_learned_bias_and_gamma_from_the_config():
    cfg = load_config({"objectives": {"focal_contrastive": {"weight": 1.0, "gamma": 2.5}, "zloss": 1e-3}})
    assert cfg.model.logit_bias == -10.0 and cfg.model.outputs == ["contrastive"]
    cfg.model.text.vocab_size = 30
    model = build_model(cfg)
    assert model.contrastive.logit_bias.item() == -10.0
    objectives = build_objectives(cfg)
    assert isinstance(objectives.losses["focal_contrastive"], FocalContrastive)
    assert objectives.losses["focal_contrastive"].gamma == 2.5
    plain = load_config({"objectives": {"contrastive": 1.0}})
    assert plain.model.logit_bias is None


@pytest.mark.parametrize("loss", ["siglip", "focal_contrastive", "zloss"])
def test_each_variant_trains_a_dual_encoder_step(loss):
    from mmtlab.data.pairs import Batch

    objectives = {loss: 1.0} if loss != "zloss" else {"contrastive": 1.0, "zloss": 1e-3}
    cfg = load_config(
        {
            "model": {"width": 16, "depth": 1, "heads": 2, "embed_dim": 8, "image": {"size": 16, "patch": 8}},
            "objectives": objectives,
        },
        ["model.text.vocab_size=30"],
    )
    model = build_model(cfg)
    b = Batch(
        torch.randn(4, 3, 16, 16), torch.randint(5, 30, (4, 6)), torch.ones(4, 6, dtype=torch.bool), torch.arange(4)
    )
    total, parts = build_objectives(cfg)(model, b, torch.Generator().manual_seed(0))
    total.backward()
    assert set(parts) == set(objectives) and torch.isfinite(total)
    assert model.contrastive.logit_scale.grad is not None


def test_caption_labels_ignore_padding_and_prompt_tokens():
    tokens = torch.tensor([[2, 10, 11, 12, 3, 0], [2, 20, 21, 3, 0, 0]])
    mask = tokens != 0
    labels = next_token_labels(tokens, mask)
    assert labels.tolist() == [[10, 11, 12, 3, IGNORE], [20, 21, 3, IGNORE, IGNORE]]
    target = torch.zeros_like(mask)
    target[:, 3:] = True  # "answer" = tokens from position 3 on
    assert next_token_labels(tokens, mask, target).tolist() == [
        [IGNORE, IGNORE, 12, 3, IGNORE],
        [IGNORE, IGNORE, 3, IGNORE, IGNORE],
    ]
    x = torch.randn(2, 5, 30, dtype=torch.float64)
    ref = torch.nn.functional.log_softmax(x, -1)
    keep = [(0, 0, 10), (0, 1, 11), (0, 2, 12), (0, 3, 3), (1, 0, 20), (1, 1, 21), (1, 2, 3)]
    expected = -sum(ref[i, t, v].item() for i, t, v in keep) / len(keep)
    assert caption_loss(x, labels).item() == pytest.approx(expected, rel=1e-6)
