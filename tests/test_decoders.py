"""Decoder families (MaMMUT, CoCa, dual encoder + captioner): layouts, the two passes, generation."""

import itertools

import pytest
import torch

from mmtlab.config import load_config
from mmtlab.data.pairs import Batch
from mmtlab.models import build_model
from mmtlab.models.fusion import build_layout
from mmtlab.models.generate import generate
from mmtlab.objectives import StepContext, build_objectives

ARCHS = ("mammut", "coca", "dual_captioner")
VOCAB = 40


def run_config(arch="mammut", objectives=None, **model):
    return load_config(
        {
            "model": {
                "arch": arch,
                "width": 32,
                "depth": 4,
                "heads": 4,
                "embed_dim": 16,
                "layout_args": {"vision_depth": 2},
                "image": {"size": 32, "patch": 8},
                "text": {"vocab_size": VOCAB, "max_len": 20},
                **model,
            },
            "objectives": objectives or {"contrastive": 1.0, "caption": 2.0},
        }
    )


def tiny(arch="mammut", **model):
    torch.manual_seed(0)
    m = build_model(run_config(arch, **model)).eval()
    with torch.no_grad():  # larger weights than the init, so greedy decoding does not just repeat a token
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def batch(b=3, n=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, VOCAB, (b, n), generator=g)
    tokens[:, 0] = 2
    mask = torch.ones(b, n, dtype=torch.bool)
    tokens[0, 6:], mask[0, 6:] = 0, False
    tokens[0, 5] = 3
    return Batch(torch.randn(b, 3, 32, 32, generator=g), tokens, mask, torch.arange(b))


# -- layouts -------------------------------------------------------------------------------------


def test_mammut_layout_cross_attention_every_second_text_layer():
    specs = build_layout("mammut", 6, vision_depth=2)
    assert [s.group for s in specs] == ["vision"] * 2 + ["text"] * 6
    assert [s.cross_attention for s in specs[2:]] == [None, "plain"] * 3
    assert all(s.causal_text for s in specs[2:]) and all("text" not in s.attend for s in specs[:2])
    every_third = build_layout("mammut", 6, vision_depth=2, cross_every=3)
    assert [s.cross_attention is not None for s in every_third[2:]] == [False, False, True] * 2
    assert all(s.cross_attention is None for s in build_layout("mammut", 6, vision_depth=2, cross_every=0))
    with pytest.raises(ValueError, match="cross_every >= 0"):
        build_layout("mammut", 6, cross_every=-1)


def test_coca_and_dual_captioner_layouts():
    coca = build_layout("coca", 6, vision_depth=1, unimodal=2)
    assert [s.group for s in coca] == ["vision", "unimodal", "unimodal"] + ["multimodal"] * 4
    assert [s.cross_attention for s in coca[1:]] == [None, None] + ["plain"] * 4
    dual = build_layout("dual_captioner", 4, vision_depth=1)
    assert [(s.group, s.causal_text, s.cross_attention) for s in dual[1:]] == [
        ("text_encoder", False, None),
        ("text_encoder", False, None),
        ("decoder", True, "plain"),
        ("decoder", True, "plain"),
    ]


def test_equal_parameter_configs_are_equal_within_three_percent():
    """The shipped tiny configs are sized for a like-for-like comparison."""
    counts = {}
    for arch, name in [("mammut", "mammut-tiny"), ("coca", "coca-tiny"), ("dual_captioner", "dual-captioner-tiny")]:
        cfg = load_config(
            {"model": name, "objectives": {"contrastive": 1.0, "caption": 2.0}}, ["model.text.vocab_size=4096"]
        )
        assert cfg.model.arch == arch
        counts[arch] = build_model(cfg).num_params()
    assert max(counts.values()) / min(counts.values()) < 1.03, counts


def test_arch_and_objective_mismatches_are_clear_errors():
    from mmtlab.config import ConfigError

    with pytest.raises(ConfigError, match="objectives.caption needs model.arch mammut or coca"):
        load_config({"objectives": {"caption": 1.0}})
    with pytest.raises(ConfigError, match="objectives.mlm needs model.arch encoder; model.arch mammut trains with"):
        run_config(objectives={"mlm": 1.0})
    with pytest.raises(ConfigError, match="does not fit arch"):
        run_config(layout="merged")


# -- the two passes ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_generative_pass_is_causal(arch):
    model = tiny(arch)
    b = batch()
    image_tokens = model.image_tokens(b.images)
    base = model.caption_logits(image_tokens, b.tokens)
    for t in (2, 5):
        changed = b.tokens.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 7) % VOCAB
        out = model.caption_logits(image_tokens, changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])


@pytest.mark.parametrize("arch", ARCHS)
def test_contrastive_pass_never_sees_the_image_but_the_generative_pass_does(arch):
    model = tiny(arch)
    b = batch()
    b.images.requires_grad_(True)
    step = StepContext(model, b, torch.Generator().manual_seed(0))
    image_emb, text_emb = step.embeddings
    (text_emb * torch.randn_like(text_emb)).sum().backward(retain_graph=True)
    assert b.images.grad is None or torch.count_nonzero(b.images.grad) == 0
    caption = step.caption.logits
    (caption * torch.randn_like(caption)).sum().backward()
    assert b.images.grad.abs().sum() > 0  # the same step's generative pass does depend on the image
    other = StepContext(model, Batch(torch.randn_like(b.images), b.tokens, b.text_mask, b.image_index), step.generator)
    assert torch.equal(other.embeddings[1], text_emb)
    assert not torch.allclose(other.embeddings[0], image_emb)


def test_mammut_without_cross_attention_captions_blind():
    """cross_every=0 (the cross-attention ablation's "none"): the captioning pass cannot see the
    image, so its loss sends exactly zero gradient to the pixels and the ViT."""
    model = tiny("mammut", layout_args={"vision_depth": 2, "cross_every": 0})
    b = batch()
    b.images.requires_grad_(True)
    step = StepContext(model, b, torch.Generator().manual_seed(0))
    caption = step.caption.logits
    (caption * torch.randn_like(caption)).sum().backward()
    assert b.images.grad is None or torch.count_nonzero(b.images.grad) == 0
    other = StepContext(model, Batch(torch.randn_like(b.images), b.tokens, b.text_mask, b.image_index), step.generator)
    assert torch.equal(other.caption.logits, caption)
    with torch.no_grad():
        cached, full = (model.generate(b.images, use_cache=c) for c in (True, False))
        assert torch.equal(cached, full) and torch.equal(model.generate(torch.randn_like(b.images)), cached)


def test_mammut_contrastive_pass_is_bidirectional_and_generative_pass_is_not():
    model = tiny("mammut")
    b = batch()
    changed = b.tokens.clone()
    changed[1:, -1] = (changed[1:, -1] + 3) % VOCAB  # the last token of the unpadded rows
    before = model.text_features(b.tokens, b.text_mask)
    after = model.text_features(changed, b.text_mask)
    assert not torch.allclose(before[1:, 0], after[1:, 0])  # the first token sees the last one
    torch.testing.assert_close(before[0], after[0])  # the padded row is untouched
    it = model.image_tokens(b.images)
    torch.testing.assert_close(model.caption_logits(it, changed)[:, 0], model.caption_logits(it, b.tokens)[:, 0])


def test_mammut_padding_does_not_change_the_contrastive_embedding():
    model = tiny("mammut")
    b = batch()
    a = model.encode_text(b.tokens[:1, :6], b.text_mask[:1, :6])
    c = model.encode_text(b.tokens[:1], b.text_mask[:1])
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_coca_reuses_the_unimodal_pass_for_captioning():
    model = tiny("coca")
    b = batch()
    it = model.image_tokens(b.images)
    full = model.caption_logits(it, b.tokens)
    reused = model.caption_logits(it, b.tokens, text_features=model.text_features(b.tokens, b.text_mask))
    torch.testing.assert_close(full, reused)


def test_two_passes_run_in_shuffled_order_and_the_loss_does_not_depend_on_it():
    cfg = run_config()
    torch.manual_seed(0)
    model = build_model(cfg)
    objectives = build_objectives(cfg)
    calls = []
    for name in ("text_features", "caption_logits"):
        method = getattr(model, name)
        setattr(model, name, lambda *a, _m=method, _n=name, **k: (calls.append(_n), _m(*a, **k))[1])
    orders, losses = set(), set()
    b = batch()
    for seed in range(8):
        calls.clear()
        loss, parts = objectives(model, b, torch.Generator().manual_seed(seed))
        orders.add(tuple(calls))
        losses.add(round(float(loss.detach()), 5))
        assert list(parts) == ["contrastive", "caption"]  # reported in config order
    assert orders == {("text_features", "caption_logits"), ("caption_logits", "text_features")}
    assert len(losses) == 1


def test_cpe_crops_in_training_only_and_a_new_resolution_runs():
    model = tiny("mammut", image={"size": 32, "patch": 8, "cpe": True})
    b = batch()
    model.train()
    boxes = StepContext(model, b, torch.Generator().manual_seed(0)).pos_box
    assert boxes.shape == (3, 4)
    model.eval()
    assert StepContext(model, b, torch.Generator().manual_seed(0)).pos_box is None
    with torch.no_grad():
        cropped = model.image_tokens(b.images, pos_box=boxes)
        full = model.image_tokens(b.images)
        assert not torch.allclose(cropped, full)
        assert model.encode_image(torch.randn(2, 3, 48, 48)).shape == (2, 16)  # 4x4 grid resampled to 6x6


# -- generation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "method"), list(itertools.product(ARCHS, ("greedy", "beam", "nucleus"))))
def test_kv_cache_decoding_gives_the_same_tokens_as_full_recompute(arch, method):
    model = tiny(arch)
    images = batch().images
    runs = [
        model.generate(images, method=method, num_beams=3, generator=torch.Generator().manual_seed(5), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape[1] > 5  # it really decoded several tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_logits_match_full_forward_step_by_step(arch):
    from mmtlab.models.layers import KVCache

    model = tiny(arch)
    b = batch()
    ctx = model.caption_context(model.image_tokens(b.images))
    tokens = b.tokens[1:, :8]
    full = model.decode(ctx[1:], tokens)
    cache = KVCache()
    pieces = [model.decode(ctx[1:], tokens[:, :3], cache)]  # a prompt of 3, then one token at a time
    pieces += [model.decode(ctx[1:], tokens[:, t : t + 1], cache) for t in range(3, 8)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)
    assert cache.length == 8


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_of_one_equals_greedy(arch):
    model = tiny(arch)
    images = batch().images
    assert torch.equal(model.generate(images, method="beam", num_beams=1), model.generate(images, method="greedy"))


def test_nucleus_with_tiny_p_is_greedy_and_sampling_is_seeded():
    model = tiny("mammut")
    images = batch().images
    greedy = model.generate(images, method="greedy")
    assert torch.equal(model.generate(images, method="nucleus", top_p=1e-6), greedy)
    a = model.generate(images, method="nucleus", top_p=0.95, generator=torch.Generator().manual_seed(3))
    b = model.generate(images, method="nucleus", top_p=0.95, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def bigram_model(table):
    """A toy causal LM for the generic decoder: next-token logits from the previous token (a
    shared table) plus the row's context vector. Any step function with this signature decodes."""

    def step(context, tokens, cache):
        if cache is not None:
            cache.length += tokens.shape[1]
        return table[tokens] + context[:, None, :]

    return step


@pytest.mark.parametrize("use_cache", [True, False])
def test_beam_search_covering_every_path_finds_the_exact_best_sequence(use_cache):
    g = torch.Generator().manual_seed(0)
    vocab, steps, batch_size = 5, 3, 2
    table, bias = torch.randn(vocab, vocab, generator=g) * 2, torch.randn(batch_size, vocab, generator=g)
    out = generate(
        bigram_model(table),
        bias,
        torch.zeros(batch_size, 1, dtype=torch.long),
        max_new_tokens=steps,
        eos_id=None,
        method="beam",
        num_beams=vocab ** (steps - 1),  # wide enough to keep every path: beam search is then exact
        length_penalty=0.0,
        use_cache=use_cache,
    )
    for row in range(batch_size):
        logp = torch.log_softmax(table + bias[row], dim=-1)  # [previous, next]
        best = max(
            itertools.product(range(vocab), repeat=steps),
            key=lambda seq: sum(logp[p, n] for p, n in zip((0, *seq[:-1]), seq)).item(),
        )
        assert out[row, 1:].tolist() == list(best)
    narrow = generate(
        bigram_model(table),
        bias,
        torch.zeros(batch_size, 1, dtype=torch.long),
        max_new_tokens=steps,
        eos_id=None,
        method="beam",
        num_beams=1,
    )
    greedy = generate(
        bigram_model(table), bias, torch.zeros(batch_size, 1, dtype=torch.long), max_new_tokens=steps, eos_id=None
    )
    assert torch.equal(narrow, greedy)


def test_rows_are_padded_after_eos():
    def step(context, tokens, cache):
        logits = torch.full((tokens.shape[0], tokens.shape[1], 6), -5.0)
        logits[0, :, 3] = 5.0  # row 0 ends at once (eos = 3); row 1 keeps emitting token 4
        logits[1, :, 4] = 5.0
        return logits

    out = generate(step, None, torch.full((2, 1), 2), max_new_tokens=4, eos_id=3, pad_id=0, use_cache=False)
    assert out.tolist() == [[2, 3, 0, 0, 0], [2, 4, 4, 4, 4]]


def test_cpe_also_crops_the_encoder_family_in_both_passes():
    cfg = load_config(
        {
            "model": {
                "width": 16,
                "depth": 1,
                "heads": 2,
                "embed_dim": 8,
                "image": {"size": 32, "patch": 8, "cpe": True},
            },
            "objectives": {"contrastive": 1.0, "mlm": 1.0},
        },
        [f"model.text.vocab_size={VOCAB}"],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    b = batch()
    train_step = StepContext(model.train(), b, torch.Generator().manual_seed(0))
    image_train = train_step.embeddings[0]
    assert train_step.masked.text_states.shape[:2] == b.tokens.shape
    image_eval = StepContext(model.eval(), b, torch.Generator().manual_seed(0)).embeddings[0]
    assert not torch.allclose(image_train, image_eval)
    assert torch.equal(image_eval, model.encode_image(b.images))


@pytest.mark.parametrize(("length_penalty", "expected"), [(0.0, [1, 3, 0, 0]), (1.0, [1, 2, 2, 2])])
def test_beam_search_keeps_finished_beams_and_ranks_them_by_length_normalised_score(length_penalty, expected):
    # After [BOS]=1: EOS (3) with p 0.55, token 2 with p 0.45; after 2: 2 again with p 0.98.
    p = torch.full((4, 4), 0.25)
    p[1] = torch.tensor([0.0, 0.0, 0.45, 0.55])
    p[2] = torch.tensor([0.0, 0.0, 0.98, 0.02])
    table = p.clamp_min(1e-12).log()
    for use_cache in (True, False):
        out = generate(
            bigram_model(table),
            torch.zeros(1, 4),
            torch.ones(1, 1, dtype=torch.long),
            max_new_tokens=3,
            eos_id=3,
            pad_id=0,
            method="beam",
            num_beams=2,
            length_penalty=length_penalty,
            use_cache=use_cache,
        )
        assert out[0].tolist() == expected
