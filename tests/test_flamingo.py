"""Flamingo: identity at initialisation, frozen parts stay frozen, media masking, the resampler."""

import torch

from mmtlab.config import ModelConfig, TrainConfig
from mmtlab.models import CausalLM, Flamingo, build_model
from mmtlab.models.perceiver import PerceiverResampler
from mmtlab.train.optim import build_optimizer

VOCAB = 50
VISION = {"layout": "modality_specific", "width": 24, "depth": 1, "heads": 2, "image": {"size": 32, "patch": 16}}


def lm_config() -> ModelConfig:
    return ModelConfig(arch="lm", width=32, depth=2, heads=2, text={"max_len": 40, "vocab_size": VOCAB})


def tiny_flamingo(seed: int = 0, gate_init: float = 0.0, vision_cfg: dict = VISION) -> tuple[Flamingo, CausalLM]:
    torch.manual_seed(seed)
    lm = CausalLM(lm_config())
    vision = build_model(ModelConfig(**vision_cfg, text={"vocab_size": VOCAB}))
    cfg = lm_config().model_dump()
    cfg.update(arch="flamingo", layout="flamingo")
    cfg["flamingo"] = {"vision_run": "-", "lm_run": "-", "latents": 4, "resampler_depth": 1, "vision": vision_cfg}
    cfg["flamingo"]["gate_init"] = gate_init
    model = Flamingo(ModelConfig.model_validate(cfg))
    model.load_frozen(vision.state_dict(), lm.state_dict())
    return model.eval(), lm.eval()


def document(model: Flamingo) -> torch.Tensor:
    """Two documents: text, <image>, text, <image>, text."""
    img = model.media_id
    row = [2, 7, 8, img, 9, 10, 11, img, 12, 13, 14, 3]
    return torch.tensor([row, row[::-1][1:] + [5]])


def test_identity_at_initialisation():
    model, lm = tiny_flamingo()
    images, counts = torch.randn(4, 3, 32, 32), torch.tensor([2, 2])
    tokens = document(model)
    media = model.media_tokens(images, counts)
    with_media = model(tokens, media)
    assert torch.equal(with_media, model(tokens)), "gates at 0: images must not change the output"
    # On plain text the model is the frozen LM, bit for bit.
    text = torch.randint(5, VOCAB, (3, 20))
    assert torch.equal(model(text, media[:1].expand(3, -1, -1)), lm(text))
    # ... and the gated blocks are live once their gates open.
    for p in (p for n, p in model.named_parameters() if n.endswith("_gate")):
        p.data.fill_(1.0)
    assert not torch.allclose(model(tokens, media), with_media)


def test_gate_init_opens_every_gate():
    model, _ = tiny_flamingo(gate_init=0.5)
    gates = [p for n, p in model.named_parameters() if n.endswith("_gate")]
    assert len(gates) == 4 and all(torch.equal(p, torch.full_like(p, 0.5)) for p in gates)
    tokens, counts, images = document(model), torch.tensor([2, 2]), torch.randn(4, 3, 32, 32)
    out = model(tokens, model.media_tokens(images, counts))
    assert not torch.allclose(out, model(tokens, model.media_tokens(images.flip(0), counts)))


def test_frozen_parameters_unchanged_by_a_step():
    model, _ = tiny_flamingo()
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("vision.") for n in frozen) and any(n.startswith("text_embed.") for n in frozen)
    assert all(n.startswith(("resampler.", "media_embed")) or ".layers." in n for n in trained)
    opt = build_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    tokens = document(model)
    logits = model(tokens, model.media_tokens(torch.randn(4, 3, 32, 32), torch.tensor([2, 2])))
    torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, VOCAB), tokens[:, 1:].clamp(max=VOCAB - 1).reshape(-1)
    ).backward()
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"frozen {n} changed"
    changed = [n for n, p in model.named_parameters() if n in trained and not torch.equal(p, trained[n])]
    assert any(n.endswith("_gate") for n in changed) and any(n.startswith("resampler.") for n in changed)


def test_frozen_vision_keeps_its_batchnorm_statistics_in_training():
    # A conv stem's BatchNorm in train mode would normalise by batch statistics and overwrite the
    # vision run's running statistics: the "frozen" encoder would drift with Flamingo's data.
    model, _ = tiny_flamingo(vision_cfg={**VISION, "image": {**VISION["image"], "stem": "conv"}})
    buffers = {n: b.clone() for n, b in model.vision.named_buffers()}
    assert any("running_mean" in n for n in buffers)
    images, counts = torch.randn(4, 3, 32, 32) * 3 + 1, torch.tensor([2, 2])
    expected = model.media_tokens(images, counts)  # eval mode
    model.train()
    assert not model.vision.training and model.resampler.training
    assert torch.equal(model.media_tokens(images, counts), expected)
    for n, b in model.vision.named_buffers():
        assert torch.equal(b, buffers[n]), f"frozen vision buffer {n} changed"


def test_media_masking_only_the_immediately_preceding_image():
    model, _ = tiny_flamingo()
    for p in (p for n, p in model.named_parameters() if n.endswith("_gate")):
        p.data.fill_(1.0)
    tokens = document(model)[:1]  # text 0-2 | <image> 3, text 4-6 | <image> 7, text 8-11
    counts = torch.tensor([2])
    a = torch.randn(2, 3, 32, 32)
    first_changed, second_changed = a.clone(), a.clone()
    first_changed[0] = torch.randn(3, 32, 32)
    second_changed[1] = torch.randn(3, 32, 32)

    def out(images):
        return model(tokens, model.media_tokens(images, counts))[0]

    base, new_first, new_second = out(a), out(first_changed), out(second_changed)
    # Before any image: nothing changes.
    assert torch.equal(base[:3], new_first[:3]) and torch.equal(base[:3], new_second[:3])
    # After image 1, before image 2: its own image matters, the later one does not.
    assert not torch.allclose(base[3:7], new_first[3:7])
    assert torch.equal(base[3:7], new_second[3:7])
    # After image 2: changing image 2 changes the output; the earlier image 1 only reaches these
    # tokens through the LM's self-attention over the tokens of chunk 1, so cut that path and check
    # the cross-attention alone: the first block's output at these positions ignores image 1.
    assert not torch.allclose(base[7:], new_second[7:])
    x = {"text": model.embed(tokens)}
    layer = model.encoder.layers[0]  # a gated block, before any LM layer mixes positions
    assert layer.spec.cross_attention == "gated_tanh"
    from mmtlab.models.flamingo import media_mask

    def gated(images):
        media = model.media_tokens(images, counts)
        mask = media_mask(tokens, model.media_id, 2, model.cfg.flamingo.latents)
        return layer({**x, "image": media}, {}, causal_text=True, cross_mask=mask)["text"][0]

    g_base, g_first = gated(a), gated(first_changed)
    assert torch.equal(g_base[7:], g_first[7:]) and not torch.allclose(g_base[3:7], g_first[3:7])


def test_resampler_output_shape_is_independent_of_input_tokens():
    torch.manual_seed(0)
    r = PerceiverResampler(in_dim=24, dim=32, heads=2, latents=6, depth=2, max_frames=4)
    for n in (1, 5, 17, 65):
        assert r(torch.randn(3, n, 24)).shape == (3, 6, 32)
    for frames in (1, 2, 4):
        assert r(torch.randn(2, frames, 9, 24)).shape == (2, 6, 32)
    # Time embeddings tell frames apart: the same features in another frame order give other latents.
    x = torch.randn(1, 2, 9, 24)
    r.time.data.normal_()
    assert not torch.allclose(r(x), r(x.flip(1)))


def test_cached_generation_matches_recomputation():
    model, _ = tiny_flamingo()
    for p in (p for n, p in model.named_parameters() if n.endswith("_gate")):
        p.data.fill_(0.5)
    prompt = document(model)[:, :9]
    images, counts = torch.randn(4, 3, 32, 32), torch.tensor([2, 2])
    for method in ("greedy", "beam"):
        a = model.generate(prompt, images, counts, max_new_tokens=6, method=method, use_cache=True)
        b = model.generate(prompt, images, counts, max_new_tokens=6, method=method, use_cache=False)
        assert torch.equal(a, b)


def test_continuation_logprobs_equal_a_full_forward_pass():
    from mmtlab.models.generate import continuation_logprobs

    model, _ = tiny_flamingo(gate_init=0.5)
    prompt = document(model)[:1, :-1]
    media = model.media_tokens(torch.randn(2, 3, 32, 32), torch.tensor([2]))
    candidates = [[7], [8, 9, 3], [10, 3]]
    got = continuation_logprobs(model.decode, (media, (prompt == model.media_id).sum(1)), prompt, candidates)
    for c, g in zip(candidates, got):
        logp = model(torch.cat([prompt, torch.tensor([c])], 1), media).log_softmax(-1)[0]
        want = sum(logp[prompt.shape[1] - 1 + i, t] for i, t in enumerate(c))
        torch.testing.assert_close(g, want, atol=1e-5, rtol=1e-5)


def test_flamingo_config_mistakes_are_one_line_errors():
    import pytest

    from mmtlab.config import ConfigError, load_config

    base = {
        "data": {"interleaved": "docs", "mixture": {"interleaved": 1.0, "pairs": 0.5}},
        "model": {"arch": "flamingo", "flamingo": {"vision_run": "v", "lm_run": "lm"}},
        "objectives": {"caption": 1.0},
        "train": {"grad_accum": 2},
    }
    assert load_config(base).model.layout == "flamingo"
    with pytest.raises(ConfigError, match="train.grad_accum 3 must be a multiple of the 2 datasets"):
        load_config(base, ["train.grad_accum=3"])
    with pytest.raises(ConfigError, match="data.interleaved"):
        load_config(base, ["data.interleaved=null"])
    with pytest.raises(ConfigError, match="caption"):
        load_config(base, ["objectives={contrastive: 1.0}"])
    with pytest.raises(ConfigError, match="flamingo"):
        load_config({**base, "model": {"arch": "lm"}})
