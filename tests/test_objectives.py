import math

import numpy as np
import pytest
import torch

from mmtlab.objectives import info_nce, mask_tokens, mlm_loss
from mmtlab.objectives.mlm import IGNORE


def reference_info_nce(img, txt, scale):
    """Loop-and-numpy InfoNCE: -log softmax of the diagonal, rows and columns, averaged."""
    img, txt = np.asarray(img, np.float64), np.asarray(txt, np.float64)
    s = scale * img @ txt.T
    n = len(s)
    i2t = -sum(s[i, i] - math.log(sum(math.exp(s[i, j]) for j in range(n))) for i in range(n)) / n
    t2i = -sum(s[j, j] - math.log(sum(math.exp(s[i, j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_info_nce_matches_reference(scale):
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=-1)
    got = info_nce(img, txt, scale).item()
    assert got == pytest.approx(reference_info_nce(img, txt, scale), rel=1e-10)


def test_info_nce_is_asymmetric_in_rows_and_columns():
    # A batch where image 0 matches every caption: rows and columns must be treated separately.
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert info_nce(img, txt, 3.0).item() == pytest.approx(reference_info_nce(img, txt, 3.0), rel=1e-6)


def test_logit_scale_init_and_clamp():
    from mmtlab.models.heads import ContrastiveHead

    head = ContrastiveHead(8, 4)
    assert head.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    assert head.scale().item() == 100.0


def test_mlm_masking_statistics():
    vocab, special = 1000, (0, 2, 3, 4)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(5, vocab, (400, 60), generator=g)
    tokens[:, 0] = 2  # [CLS]
    tokens[:, 50] = 3  # [SEP]
    tokens[:, 51:] = 0  # padding
    mask = tokens != 0
    inputs, labels = mask_tokens(tokens, mask, special_ids=special, mask_id=4, vocab_size=vocab, prob=0.15, generator=g)
    chosen = labels != IGNORE
    ordinary = mask & ~torch.isin(tokens, torch.tensor(special))
    assert not (chosen & ~ordinary).any(), "special tokens and padding are never chosen"
    frac = chosen.sum().item() / ordinary.sum().item()
    assert abs(frac - 0.15) < 0.01
    assert torch.equal(labels[chosen], tokens[chosen])
    assert torch.equal(inputs[~chosen], tokens[~chosen]), "unchosen tokens are left alone"
    n = chosen.sum().item()
    masked = (inputs[chosen] == 4).sum().item() / n
    kept = (inputs[chosen] == tokens[chosen]).sum().item() / n
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015  # includes random draws that hit the same token (p = 1/995)
    assert abs(random - 0.1) < 0.015
    replaced = inputs[chosen & (inputs != 4) & (inputs != tokens)]
    assert not torch.isin(replaced, torch.tensor(special)).any(), "random replacements are ordinary tokens"


def test_mlm_masking_is_deterministic_given_generator():
    tokens = torch.randint(5, 50, (8, 20))
    mask = torch.ones_like(tokens, dtype=torch.bool)
    kw = dict(special_ids=(0, 2, 3, 4), mask_id=4, vocab_size=50, prob=0.3)
    a = mask_tokens(tokens, mask, generator=torch.Generator().manual_seed(1), **kw)
    b = mask_tokens(tokens, mask, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_mlm_loss_is_mean_ce_over_labelled_positions():
    logits = torch.randn(2, 3, 10)
    labels = torch.tensor([[IGNORE, 4, IGNORE], [7, IGNORE, 1]])
    logp = torch.log_softmax(logits, -1)
    want = -(logp[0, 1, 4] + logp[1, 0, 7] + logp[1, 2, 1]) / 3
    assert mlm_loss(logits, labels).item() == pytest.approx(want.item(), rel=1e-6)
