"""Every attention-layout preset: which input stream can influence which output stream, exactly."""

import pytest
import torch

from mmtlab.models.fusion import FusionEncoder, build_layout, unimodal_prefix

T, IMG = "text", "image"

# (preset, kwargs, depth) -> the (source, destination) influences the layout must have: the spec.
EXPECTED = {
    ("merged", (), 2): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("merged", (("weights", "per_modality"),), 2): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("modality_specific", (), 2): {(T, T), (IMG, IMG)},
    ("asym_text_queries", (), 2): {(T, T), (IMG, T), (IMG, IMG)},
    ("asym_image_queries", (), 2): {(T, T), (T, IMG), (IMG, IMG)},
    ("coattention", (), 1): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("coattention", (("text_layers", 1), ("image_layers", 1)), 2): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("lxmert", (("text_layers", 1), ("image_layers", 1)), 1): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("mixed", (("k", 1),), 2): {(T, T), (T, IMG), (IMG, T), (IMG, IMG)},
    ("mixed", (("k", 2),), 2): {(T, T), (IMG, IMG)},
}
CASES = sorted(EXPECTED, key=str)


def spec_reachability(specs) -> set[tuple[str, str]]:
    """Influence implied by the LayerSpecs alone: a query stream's state takes in the states of
    every stream it attends to (and its own, through the residual)."""
    deps = {T: {T}, IMG: {IMG}}
    for s in specs:
        new = {m: set(d) for m, d in deps.items()}
        for q, keys in s.attend.items():
            for k in keys:
                new[q] |= deps[k]
        deps = new
    return {(src, dst) for dst, srcs in deps.items() for src in srcs}


def gradient_reachability(enc) -> dict[tuple[str, str], float]:
    g = torch.Generator().manual_seed(0)
    x = {
        T: torch.randn(2, 5, 16, generator=g, requires_grad=True),
        IMG: torch.randn(2, 4, 16, generator=g, requires_grad=True),
    }
    out = {}
    for dst in (T, IMG):
        for v in x.values():
            v.grad = None
        y = enc(x)[dst]
        (y * torch.randn(y.shape, generator=g)).sum().backward()
        for src in (T, IMG):
            grad = x[src].grad
            out[(src, dst)] = 0.0 if grad is None else grad.abs().sum().item()
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}{dict(c[1]) or ''}-d{c[2]}")
def test_influence_is_exactly_what_the_layout_specifies(case):
    name, kwargs, depth = case
    specs = build_layout(name, depth, **dict(kwargs))
    assert spec_reachability(specs) == EXPECTED[case]
    torch.manual_seed(0)
    enc = FusionEncoder(specs, dim=16, heads=2).eval()
    got = gradient_reachability(enc)
    for pair, magnitude in got.items():
        if pair in EXPECTED[case]:
            assert magnitude > 0, f"{pair[0]} should influence {pair[1]}"
        else:
            assert magnitude == 0.0, f"{pair[0]} must not influence {pair[1]} (gradient {magnitude})"


def co_attention_layer():
    specs = build_layout("coattention", 1)
    assert specs[0].attend == {T: (IMG,), IMG: (T,)} and specs[0].ffn, "a Co-TRM layer: exchange, then FFN"
    assert specs[1].attend == {T: (T,), IMG: (IMG,)}
    torch.manual_seed(0)
    return FusionEncoder(specs[:1], dim=16, heads=2).eval()


def test_coattention_exchanges_keys_and_values():
    enc = co_attention_layer()
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, 6, 16, generator=g, requires_grad=True)
    image = torch.randn(1, 4, 16, generator=g, requires_grad=True)
    out = enc({T: text, IMG: image})[T]
    out[0, 2].sum().backward()
    others = torch.ones(6, dtype=torch.bool)
    others[2] = False
    # Text position 2 sees no other text position: its queries attend to image keys/values only.
    assert torch.count_nonzero(text.grad[0, others]) == 0
    assert text.grad[0, 2].abs().sum() > 0 and image.grad.abs().sum() > 0


def test_coattention_uses_the_other_streams_key_value_weights():
    enc = co_attention_layer()
    x = {T: torch.randn(2, 6, 16), IMG: torch.randn(2, 4, 16)}
    base = enc(x)[T]
    d = 16
    with torch.no_grad():  # the text stream's own K/V projection is never used for text queries
        enc.layers[0].streams[T].attn.qkv.weight[d:] += 1.0
    torch.testing.assert_close(enc(x)[T], base)
    with torch.no_grad():  # ... the image stream's K/V projection is
        enc.layers[0].streams[IMG].attn.qkv.weight[d:] += 1.0
    assert not torch.allclose(enc(x)[T], base)


def test_lxmert_cross_attention_is_shared_by_both_directions():
    specs = build_layout("lxmert", 2, text_layers=1, image_layers=1)
    assert len(specs) == 1 + 1 + 2 * 2
    cross = specs[2]
    assert cross.attend == {T: (IMG,), IMG: (T,)} and cross.weights == "shared" and not cross.ffn
    assert specs[3].attend == {T: (T,), IMG: (IMG,)} and specs[3].weights == "per_modality" and specs[3].ffn


def count(specs, dim=16):
    return sum(p.numel() for p in FusionEncoder(specs, dim=dim, heads=2).parameters())


def test_two_stream_layouts_have_equal_parameters_at_equal_depth():
    # What the layout study compares: per-stream weights everywhere, so only the attention pattern differs.
    depth = 4
    ms = count(build_layout("modality_specific", depth))
    assert count(build_layout("merged", depth, weights="per_modality")) == ms
    assert count(build_layout("mixed", depth, k=2, weights="per_modality")) == ms
    assert count(build_layout("asym_text_queries", depth, weights="per_modality")) == ms
    assert count(build_layout("coattention", depth // 2)) == ms  # a block is two layers per stream
    assert count(build_layout("merged", depth)) * 2 == ms  # shared weights: half


@pytest.mark.parametrize(
    "name, kwargs, depth, prefix",
    [
        ("merged", {}, 3, 0),
        ("modality_specific", {}, 3, 3),
        ("mixed", {"k": 2}, 4, 2),
        ("coattention", {"text_layers": 2}, 2, 2),
        ("lxmert", {"text_layers": 3, "image_layers": 2}, 2, 5),
        ("asym_text_queries", {}, 2, 0),
    ],
)
def test_unimodal_prefix(name, kwargs, depth, prefix):
    assert unimodal_prefix(build_layout(name, depth, **kwargs)) == prefix
