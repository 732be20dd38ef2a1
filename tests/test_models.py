import pytest
import torch

from mmtlab.config import load_config
from mmtlab.models import LayerSpec, build_model
from mmtlab.models.fusion import PRESETS, FusionEncoder, build_layout
from mmtlab.models.vision import PatchEmbedding, sample_pos_grid


def tiny(layout="modality_specific", outputs=("contrastive", "mlm"), **model):
    cfg = load_config(
        {
            "model": {
                "layout": layout,
                "width": 32,
                "depth": 2,
                "heads": 4,
                "embed_dim": 16,
                "outputs": list(outputs),
                "image": {"size": 32, "patch": 8},
                "text": {"vocab_size": 50, "max_len": 16},
                **model,
            },
            "objectives": {name: 1.0 for name in outputs},
        }
    )
    torch.manual_seed(0)
    return build_model(cfg).eval()


def inputs(b=2, n=9):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(5, 50, (b, n), generator=g)
    tokens[:, 0] = 2
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 6:] = False
    tokens[0, 6:] = 0
    return torch.randn(b, 3, 32, 32, generator=g), tokens, mask


def image_to_text_grad(model):
    images, tokens, mask = inputs()
    images.requires_grad_(True)
    out = model(images=images, tokens=tokens, text_mask=mask)["text"]
    (out * torch.randn_like(out)).sum().backward()
    return torch.zeros_like(images) if images.grad is None else images.grad


# Layouts in which text can see the image somewhere (and the ones where it cannot).
TEXT_SEES_IMAGE = {
    "merged": True,
    "modality_specific": False,
    "asym_text_queries": True,
    "asym_image_queries": False,
    "coattention": True,
    "lxmert": True,
}


@pytest.mark.parametrize("layout", sorted(TEXT_SEES_IMAGE))
def test_cross_modal_gradient_exactly_zero_or_not(layout):
    grad = image_to_text_grad(tiny(layout))
    if TEXT_SEES_IMAGE[layout]:
        assert grad.abs().sum() > 0
    else:
        assert torch.count_nonzero(grad) == 0


def test_mixed_has_a_path_only_through_merged_layers():
    assert torch.count_nonzero(image_to_text_grad(tiny("mixed", layout_args={"k": 2}))) == 0
    assert image_to_text_grad(tiny("mixed", layout_args={"k": 1})).abs().sum() > 0


def test_dual_encoder_embeddings_do_not_depend_on_the_other_modality():
    model = tiny("modality_specific")
    images, tokens, mask = inputs()
    joint = model(images=images, tokens=tokens, text_mask=mask)
    alone = model(tokens=tokens, text_mask=mask)
    torch.testing.assert_close(joint["text"], alone["text"])


def test_padding_does_not_change_real_tokens():
    model = tiny("merged")
    images, tokens, mask = inputs()
    a = model(images=images[:1], tokens=tokens[:1, :6], text_mask=mask[:1, :6])["text"]
    b = model(images=images[:1], tokens=tokens[:1], text_mask=mask[:1])["text"][:, :6]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_text_has_no_future_leak():
    enc = FusionEncoder(
        [LayerSpec(attend={"text": ("text", "image"), "image": ("image",)}, causal_text=True)] * 2, dim=16, heads=2
    ).eval()
    g = torch.Generator().manual_seed(0)
    text, image = torch.randn(1, 8, 16, generator=g), torch.randn(1, 5, 16, generator=g)
    base = enc({"text": text, "image": image})["text"]
    changed = text.clone()
    changed[:, 5] += 1.0
    out = enc({"text": changed, "image": image})["text"]
    torch.testing.assert_close(out[:, :5], base[:, :5])
    assert not torch.allclose(out[:, 5:], base[:, 5:])


def test_gated_cross_attention_is_identity_at_init():
    spec = LayerSpec(cross_attention="gated_tanh")
    enc = FusionEncoder([spec], dim=16, heads=2)
    x = {"text": torch.randn(2, 7, 16), "image": torch.randn(2, 4, 16)}
    out = enc(x)
    assert torch.equal(out["text"], x["text"])
    assert torch.equal(out["image"], x["image"])


def test_frozen_layers_have_no_trainable_parameters():
    enc = FusionEncoder([LayerSpec(attend={"text": ("text",)}, frozen=True)], dim=16, heads=2)
    assert not any(p.requires_grad for p in enc.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_runs(name):
    specs = build_layout(name, 2)
    enc = FusionEncoder(specs, dim=16, heads=2)
    out = enc({"text": torch.randn(2, 5, 16), "image": torch.randn(2, 4, 16)})
    assert out["text"].shape == (2, 5, 16) and out["image"].shape == (2, 4, 16)


def test_bad_layout_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown layout 'foo'"):
        build_layout("foo", 2)


def test_pos_grid_identity_and_resolution_change():
    pos = torch.randn(8, 4, 4)
    torch.testing.assert_close(sample_pos_grid(pos, (4, 4), None), pos, atol=1e-5, rtol=1e-5)
    assert sample_pos_grid(pos, (6, 6), None).shape == (8, 6, 6)
    # A crop box of the upper-left quadrant sampled at 2x2 hits the centres of cells (0,0),(0,1),(1,0),(1,1)
    # of an upsampled 4x4 grid, i.e. 2x2 bicubic samples inside the first quadrant.
    crop = sample_pos_grid(pos, (2, 2), (0.0, 0.0, 0.5, 0.5))
    assert crop.shape == (8, 2, 2)
    full_from_crop = sample_pos_grid(pos, (4, 4), (0.0, 0.0, 1.0, 1.0))
    torch.testing.assert_close(full_from_crop, pos, atol=1e-5, rtol=1e-5)


def test_model_runs_at_a_new_resolution():
    emb = PatchEmbedding(32, 8, 16)
    assert emb(torch.randn(1, 3, 48, 48)).shape == (1, 1 + 36, 16)
    model = tiny("modality_specific")
    assert model.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 16)


def test_embeddings_are_unit_norm_and_score_is_scaled_cosine():
    model = tiny("modality_specific")
    images, tokens, mask = inputs()
    img, txt = model.encode_image(images), model.encode_text(tokens, mask)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(model.score(images, tokens, mask), model.contrastive.scale() * (img * txt).sum(-1))


def test_missing_head_is_a_clear_error():
    model = tiny("merged", outputs=("mlm",))
    with pytest.raises(RuntimeError, match="no contrastive head"):
        model.encode_text(*inputs()[1:])


# -- shared helpers (models/common.py, layers.split_heads / merge_heads) -----------------------------

WIDE = {"width": 64, "depth": 2, "heads": 4, "embed_dim": 32, "image": {"size": 32, "patch": 8}}
FAMILIES = {
    "encoder": {"layout": "merged", "outputs": ["contrastive", "mlm", "itm"]},
    "encoder_regions": {
        "layout": "coattention",
        "outputs": ["mlm", "mrm", "itm"],
        "image": {"size": 32, "patch": 8, "input": "regions", "region_dim": 24, "region_classes": 12},
    },
    "mammut": {"arch": "mammut", "outputs": ["contrastive"]},
    "coca": {"arch": "coca", "outputs": ["contrastive"], "caption_queries": 4},
    "dual_captioner": {"arch": "dual_captioner", "outputs": ["contrastive"]},
    "lm": {"arch": "lm"},
    "data2vec": {"arch": "data2vec", "data2vec": {"modalities": ["image", "text"]}},
    "data2vec_speech": {"arch": "data2vec", "data2vec": {"modalities": ["speech"]}},
    "data2vec_efficient": {"arch": "data2vec", "data2vec": {"modalities": ["image"], "efficient": True}},
    "flamingo": {
        "arch": "flamingo",
        "flamingo": {
            "vision_run": "-",
            "lm_run": "-",
            "latents": 4,
            "vision": {"layout": "modality_specific", "width": 48, "depth": 1, "heads": 2, "image": WIDE["image"]},
        },
    },
}


def family(name: str, vocab: int | None = 50):
    from mmtlab.config import ModelConfig

    raw = {**WIDE, "text": {"vocab_size": vocab, "max_len": 16}, **FAMILIES[name]}
    torch.manual_seed(0)
    return build_model(ModelConfig.model_validate(raw))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_initialised_by_the_shared_init(name):
    """PyTorch's own defaults (uniform Linear weights of std 1/sqrt(3 fan_in), nonzero biases,
    N(0, 1) embeddings) all fail these, so a family that skipped models.common.init_weights would."""
    from mmtlab.models.common import INIT_STD, RESIDUAL_PROJECTIONS

    model = family(name)
    residual_std = INIT_STD / (2 * len(model.layout)) ** 0.5
    names = {id(p): n for n, p in model.named_parameters()}
    checked = 0
    for mod_name, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight)), mod_name
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), mod_name
        if isinstance(m, torch.nn.Linear) and m.bias is not None:
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), mod_name
        if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            want = residual_std if names[id(m.weight)].endswith(RESIDUAL_PROJECTIONS) else INIT_STD
            std = m.weight.std().item()
            assert 0.7 * want < std < 1.4 * want, f"{mod_name}: std {std:.4f}, init gives {want:.4f}"
            checked += 1
    assert checked >= 5
    if name.startswith("data2vec"):  # bare Parameters the init covers: the mask embeddings (built as zeros)
        for p in model.mask_emb.values():
            assert 0.5 * INIT_STD < p.std().item() < 1.5 * INIT_STD


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_needs_a_vocabulary_and_counts_its_parameters(name):
    if name not in ("data2vec_efficient", "data2vec_speech"):  # no text, no vocabulary
        with pytest.raises(ValueError, match="vocab_size is not set"):
            family(name, vocab=None)
    model = family(name)
    untrained = ("teacher.",) if name.startswith("data2vec") else ()
    params = [(n, p) for n, p in model.named_parameters() if not n.startswith(untrained)]
    assert model.num_params() == sum(p.numel() for _, p in params)
    frozen_from_start = name == "flamingo"  # the vision encoder, the LM's layers, embeddings and norm
    assert (model.num_params(trainable_only=True) < model.num_params()) == frozen_from_start
    model.encoder.layers[0].requires_grad_(False)
    trainable = sum(p.numel() for _, p in params if p.requires_grad)
    assert 0 < model.num_params(trainable_only=True) == trainable < model.num_params()


@pytest.mark.parametrize("name", ["mammut", "coca", "dual_captioner", "lm", "flamingo"])
def test_output_layer_is_tied_to_the_token_embedding(name):
    model = family(name).eval()
    states = torch.randn(2, 5, 64)
    logits = model.lm_logits(states)
    assert logits.shape == (2, 5, 50)
    with torch.no_grad():
        model.text_embed.tok.weight[7].zero_()
    after = model.lm_logits(states)
    assert torch.equal(after[..., 7], torch.zeros_like(after[..., 7]))
    torch.testing.assert_close(after[..., :7], logits[..., :7], rtol=0, atol=0)


def test_split_heads_takes_contiguous_channel_blocks_and_merge_heads_inverts_it():
    from mmtlab.models.layers import merge_heads, split_heads

    b, n, d, h = 2, 5, 12, 3
    x = torch.randn(b, n, d)
    heads = split_heads(x, h)
    assert heads.shape == (b, h, n, d // h)
    for j in range(h):  # head j reads channels j*dh .. (j+1)*dh (the layout GPT-2 weights assume)
        assert torch.equal(heads[:, j], x[..., j * 4 : (j + 1) * 4])
    assert torch.equal(merge_heads(heads), x)
    packed = torch.randn(b, n, 3 * d)  # q, k, v in one projection
    q, k, v = split_heads(packed, h, 3)
    for i, part in enumerate((q, k, v)):
        assert torch.equal(part, split_heads(packed[..., i * d : (i + 1) * d], h))
        assert torch.equal(merge_heads(part), packed[..., i * d : (i + 1) * d])


def test_attention_matches_a_per_head_reference():
    from mmtlab.models.layers import Attention, CrossAttention

    torch.manual_seed(0)
    d, h = 12, 3
    x, ctx = torch.randn(2, 5, d), torch.randn(2, 7, d)

    def reference(q, k, v, proj):
        dh = d // h
        outs = [
            torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / dh**0.5, -1) @ v[..., s]
            for s in (slice(j * dh, (j + 1) * dh) for j in range(h))
        ]
        return proj(torch.cat(outs, -1))

    attn = Attention(d, h)
    q, k, v = attn.qkv(x).split(d, -1)
    torch.testing.assert_close(attn.attend(*attn.project_qkv(x), None), reference(q, k, v, attn.proj))
    cross = CrossAttention(d, h)
    k, v = cross.kv(ctx).split(d, -1)
    torch.testing.assert_close(cross(x, cross.project_kv(ctx)), reference(cross.q(x), k, v, cross.proj))
