import math

import pytest
import torch

from mmtlab.eval.retrieval import chance_recall, recall_at_k


def brute_force(scores, text_to_image, ks):
    """Sort-based reference: ties are broken against the model (the correct item sorts last)."""
    n_img, n_txt = len(scores), len(scores[0])
    out = {}
    for k in ks:
        hits = 0
        counted = 0
        for i in range(n_img):
            pos = {j for j in range(n_txt) if text_to_image[j] == i}
            if not pos:
                continue
            counted += 1
            order = sorted(range(n_txt), key=lambda j: (-scores[i][j], j in pos))
            first = next(r for r, j in enumerate(order) if j in pos)
            hits += first < k
        out[f"i2t_r{k}"] = 100.0 * hits / counted
    for k in ks:
        hits = 0
        for j in range(n_txt):
            order = sorted(range(n_img), key=lambda i: (-scores[i][j], i == text_to_image[j]))
            hits += order.index(text_to_image[j]) < k
        out[f"t2i_r{k}"] = 100.0 * hits / n_txt
    return out


@pytest.mark.parametrize("seed", range(5))
def test_recall_matches_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n_img, per = 12, 3
    # Integer scores in a small range make many ties.
    scores = torch.randint(0, 4, (n_img, n_img * per), generator=g).float()
    t2i = torch.arange(n_img).repeat_interleave(per)[torch.randperm(n_img * per, generator=g)]
    ks = (1, 2, 5, 10)
    got = recall_at_k(scores, t2i, ks)
    want = brute_force(scores.tolist(), t2i.tolist(), ks)
    assert got == pytest.approx(want)


def test_all_equal_scores_count_against_the_model():
    scores = torch.zeros(4, 8)
    t2i = torch.arange(4).repeat_interleave(2)
    r = recall_at_k(scores, t2i, ks=(1,))
    assert r["i2t_r1"] == 0.0 and r["t2i_r1"] == 0.0


def test_perfect_scores_and_nan():
    t2i = torch.tensor([0, 0, 1, 1, 2])
    scores = torch.full((3, 5), -1.0)
    scores[t2i, torch.arange(5)] = 1.0
    r = recall_at_k(scores, t2i, ks=(1,))
    assert r == {"i2t_r1": 100.0, "t2i_r1": 100.0}
    scores[0, 0] = float("nan")  # NaN counts as -inf, never as a hit
    scores[0, 1] = float("nan")
    r = recall_at_k(scores, t2i, ks=(1,))
    assert r["i2t_r1"] == pytest.approx(200 / 3)


def test_image_without_captions_is_left_out_of_i2t():
    t2i = torch.tensor([0, 0])
    scores = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert recall_at_k(scores, t2i, ks=(1,))["i2t_r1"] == 100.0


def test_chance_levels():
    t2i = torch.arange(100).repeat_interleave(5)
    c = chance_recall(t2i, 100, ks=(1, 10))
    assert c["t2i_r1"] == pytest.approx(1.0)
    assert c["t2i_r10"] == pytest.approx(10.0)
    assert c["i2t_r1"] == pytest.approx(100 * 5 / 500)
    assert c["i2t_r10"] == pytest.approx(100 * (1 - math.comb(495, 10) / math.comb(500, 10)))


def test_random_scores_land_near_chance():
    g = torch.Generator().manual_seed(0)
    t2i = torch.arange(200).repeat_interleave(5)
    r = recall_at_k(torch.randn(200, 1000, generator=g), t2i, ks=(10,))
    c = chance_recall(t2i, 200, ks=(10,))
    assert abs(r["t2i_r10"] - c["t2i_r10"]) < 3.0
    assert abs(r["i2t_r10"] - c["i2t_r10"]) < 12.0
