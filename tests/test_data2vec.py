import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_run_config
from safetensors.torch import load_file

import mmtlab
from mmtlab.config import ConfigError, load_config, resolve
from mmtlab.data.tokenizer import load_tokenizer
from mmtlab.data.unimodal import ModalityBatch
from mmtlab.models import Data2Vec, build_model
from mmtlab.models.data2vec import ema_decay_at
from mmtlab.objectives import build_objectives
from mmtlab.objectives.data2vec import data2vec_pass, gather_rows, normalise, regression_loss, scatter_rows
from mmtlab.objectives.masking import block_mask, span_mask
from mmtlab.train.checkpoint import init_from, latest_checkpoint
from mmtlab.train.loop import train
from mmtlab.train.optim import build_optimizer

TINY_SPEECH = {
    "conv_layers": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
    "conv_pos_groups": 4,
    "max_seconds": 1.0,
}


def d2v_config(modalities=("image", "text"), efficient=False, copies=1, steps=10, **d2v):
    raw = {
        "model": {
            "arch": "data2vec",
            "width": 32,
            "depth": 3,
            "heads": 2,
            "image": {"size": 32, "patch": 8},
            "text": {"vocab_size": 50, "max_len": 16},
            "speech": TINY_SPEECH if "speech" in modalities else None,
            "data2vec": {
                "modalities": list(modalities),
                "efficient": efficient,
                "masks_per_sample": copies,
                "ema_decay": 0.9,
                "ema_end_decay": 0.99,
                **{m: {"decoder_groups": 4, "decoder_layers": 2} for m in ("image", "speech")},
                **d2v,
            },
        },
        "objectives": {"data2vec": 1.0},
        "train": {"steps": steps},
    }
    return load_config(raw)


def toy_batch(b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, 50, (b, 12), generator=g)
    tokens[:, 0], tokens[:, -1] = 2, 3
    tokens[b // 2 :, 9:] = 0  # padding in half the rows
    tokens[b // 2 :, 8] = 3
    return ModalityBatch(
        images=torch.randn(b, 3, 32, 32, generator=g),
        tokens=tokens,
        text_mask=tokens != 0,
        audio=torch.randn(b, 8000, generator=g),
    )


def fresh(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.ema_updates += 1  # past the initial teacher := student copy, so teacher and student differ below
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


# -- EMA teacher ---------------------------------------------------------------------------------


def test_ema_decay_schedule_is_linear_then_constant():
    assert ema_decay_at(0, 0.999, 0.9999, 1000) == pytest.approx(0.999)
    assert ema_decay_at(500, 0.999, 0.9999, 1000) == pytest.approx(0.99945)
    assert ema_decay_at(1000, 0.999, 0.9999, 1000) == 0.9999
    assert ema_decay_at(5000, 0.999, 0.9999, 1000) == 0.9999


def test_teacher_parameters_follow_the_ema_formula_exactly():
    cfg = d2v_config(("image",), steps=4)  # anneal over 4 updates: decays 0.9225, 0.945, 0.9675, 0.99
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = build_objectives(cfg)
    opt = build_optimizer(model, cfg.train)
    batch = toy_batch()
    for step in range(1, 6):
        loss, _ = objective(model, batch, torch.Generator().manual_seed(step))
        loss.backward()
        opt.step()
        opt.zero_grad()
        before = {n: p.detach().double().clone() for n, p in model.teacher.named_parameters()}
        student = {n: p.detach().double().clone() for n, p in model.encoder.named_parameters()}
        objective.after_optimizer_step(model, step)
        tau = 0.9 + (0.99 - 0.9) * min(step, 4) / 4
        assert model.teacher_decay(step) == pytest.approx(tau)
        for n, p in model.teacher.named_parameters():
            expected = tau * before[n] + (1 - tau) * student[n]
            torch.testing.assert_close(p.double(), expected, rtol=2.5e-7, atol=1e-9, msg=n)  # float32 rounding
        assert int(model.ema_updates) == step
    # At the first step the teacher started as a copy of the student; it has moved since but lags it.
    assert any(not torch.equal(t, s) for t, s in zip(model.teacher.parameters(), model.encoder.parameters()))


def test_no_gradient_reaches_the_teacher():
    cfg = d2v_config(("image", "text"))
    model = fresh(cfg)
    loss, _ = build_objectives(cfg)(model, toy_batch(), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(not p.requires_grad and p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert not any(n.startswith("teacher.") for n, p in model.named_parameters() if p.requires_grad)
    assert model.num_params() == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("efficient", [False, True])
def test_targets_come_only_from_the_teacher(efficient):
    cfg = d2v_config(("image", "text"), efficient=efficient)
    model = fresh(cfg)
    batch = toy_batch()
    first = data2vec_pass(model, batch, torch.Generator().manual_seed(1))
    with torch.no_grad():  # a different student ...
        for n, p in model.named_parameters():
            if not n.startswith("teacher.") and "embed" not in n:
                p.add_(torch.randn_like(p))
    second = data2vec_pass(model, batch, torch.Generator().manual_seed(1))
    for m in first:
        assert not first[m].target.requires_grad
        torch.testing.assert_close(first[m].target, second[m].target, rtol=0, atol=0)  # ... same targets
        assert not torch.allclose(first[m].prediction, second[m].prediction)
    with torch.no_grad():  # a different teacher: different targets
        for p in model.teacher.parameters():
            p.mul_(1.5)
    third = data2vec_pass(model, batch, torch.Generator().manual_seed(1))
    assert all(not torch.allclose(first[m].target, third[m].target) for m in first)


def reference_targets(model, m, x, which, top_k, layer_norm, target_norm, extra):
    """Targets from the teacher's weights by hand: pre-LN blocks unrolled, norms from mean / var."""
    outs = []
    for layer in model.teacher.layers:
        s = layer.stream(m)
        q, k, v = s.attn.project_qkv(s.ln_attn(x))
        h = x + s.attn.attend(q, k, v, None)
        ffn = s.mlp(s.ln_mlp(h))
        x = h + ffn
        outs.append((ffn if which == "ffn" else x)[:, extra:])

    def norm(y, how):
        if how == "layer":
            return (y - y.mean(-1, keepdim=True)) / torch.sqrt(y.var(-1, unbiased=False, keepdim=True) + 1e-5)
        if how == "instance":
            return (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5)
        return y

    avg = sum(norm(y, layer_norm) for y in outs[-top_k:]) / top_k
    return norm(avg, target_norm)


@pytest.mark.parametrize(
    "m, which, layer_norm, target_norm",
    [("image", "block", "instance", "layer"), ("text", "ffn", "layer", "none"), ("speech", "ffn", "instance", "none")],
)
def test_targets_match_reference(m, which, layer_norm, target_norm):
    spec = {"target_layer": which, "layer_norm": layer_norm, "target_norm": target_norm, "top_k": 2}
    cfg = d2v_config((m,), **{m: spec})
    model = fresh(cfg)
    batch = toy_batch()
    if m == "text":  # the reference has no padding
        batch.tokens = batch.tokens[:2]
        batch.text_mask = batch.text_mask[:2]
    p = data2vec_pass(model, batch, torch.Generator().manual_seed(0))[m]
    raw = {"image": batch.images, "text": batch.tokens, "speech": batch.audio}[m]
    with torch.no_grad():
        x = model.contextualize(m, model.local(m, raw))
        ref = reference_targets(model, m, x, which, 2, layer_norm, target_norm, model.extra_tokens(m))
    torch.testing.assert_close(p.target, ref[p.hidden], rtol=1e-4, atol=1e-4)


def test_masked_instance_norm_ignores_padding():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 10, 4, generator=g)
    real = torch.tensor([[True] * 10, [True] * 6 + [False] * 4, [True] * 3 + [False] * 7])
    out = normalise(y, real, "instance")
    for b, n in enumerate((10, 6, 3)):
        ref = F.instance_norm(y[b : b + 1, :n].transpose(1, 2)).transpose(1, 2)[0]
        torch.testing.assert_close(out[b, :n], ref, rtol=1e-5, atol=1e-5)
        assert (out[b, n:] == 0).all()


# -- loss ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.5, 2.0])
def test_regression_loss_matches_reference(beta):
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(7, 5, generator=g, dtype=torch.float64) * 2, torch.randn(7, 5, generator=g, dtype=torch.float64)
    total = 0.0
    for i in range(7):
        for j in range(5):
            d = abs(p[i, j].item() - t[i, j].item())
            if beta == 0:
                total += d * d
            else:
                total += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    expected = total / 7 / math.sqrt(5)
    assert regression_loss(p, t, beta, 1 / math.sqrt(5)).item() == pytest.approx(expected, rel=1e-6)  # in float32


@pytest.mark.parametrize("m", ["image", "text", "speech"])
@pytest.mark.parametrize("efficient", [False, True])
def test_loss_only_on_masked_positions(m, efficient):
    """The loss's gradient with respect to the per-position predictions is zero wherever nothing
    was masked: unmasked positions (and the image CLS, padding) contribute nothing."""
    cfg = d2v_config((m,), efficient=efficient)
    model = fresh(cfg)
    grabbed = {}
    module = model.decoder[m] if efficient else model.norm[m]

    def keep(_mod, _inp, out):
        out.retain_grad()
        grabbed["out"] = out

    module.register_forward_hook(keep)
    p = data2vec_pass(model, toy_batch(), torch.Generator().manual_seed(0))[m]
    regression_loss(p.prediction, p.target, p.beta, p.scale).backward()
    grad = grabbed["out"].grad.abs().sum(-1)[:, model.extra_tokens(m) if not efficient else 0 :]
    assert p.hidden.any()
    assert (grad[~p.hidden] == 0).all()
    assert (grad[p.hidden] > 0).float().mean() > 0.95
    if not efficient and m == "image":
        assert grabbed["out"].grad[:, 0].abs().sum() == 0  # CLS


def test_student_sees_the_masked_image_and_the_teacher_the_unmasked_one():
    cfg = d2v_config(("image",))
    model = fresh(cfg)
    inputs = {}
    model.encoder.layers[0].register_forward_hook(lambda mod, inp, out: inputs.__setitem__("student", inp[0]["image"]))
    model.teacher.layers[0].register_forward_hook(lambda mod, inp, out: inputs.__setitem__("teacher", inp[0]["image"]))
    batch = toy_batch()
    p = data2vec_pass(model, batch, torch.Generator().manual_seed(0))["image"]
    with torch.no_grad():
        pos = model.image_embed.pos_embed((4, 4))
        patches = model.local("image", batch.images) + pos
        torch.testing.assert_close(inputs["teacher"][:, 1:], patches)
        student = inputs["student"][:, 1:]
        torch.testing.assert_close(student[~p.hidden], patches[~p.hidden])
        expected = (model.mask_emb["image"] + pos).expand(len(batch.images), -1, -1)[p.hidden]
        torch.testing.assert_close(student[p.hidden], expected)


def test_efficient_student_sees_only_visible_tokens_and_masks_share_one_teacher_pass():
    cfg = d2v_config(("image",), efficient=True, copies=3, image={"mask_prob": 0.75, "decoder_groups": 4})
    model = fresh(cfg)
    seen = {"student": [], "teacher": 0}
    model.encoder.layers[0].register_forward_hook(lambda mod, inp, out: seen["student"].append(inp[0]["image"].shape))
    model.teacher.layers[0].register_forward_hook(lambda *a: seen.__setitem__("teacher", seen["teacher"] + 1))
    p = data2vec_pass(model, toy_batch(b=4), torch.Generator().manual_seed(0))["image"]
    n = 16  # 4x4 patches
    assert seen["teacher"] == 1
    assert seen["student"] == [torch.Size([4 * 3, 1 + n - 12, 32])]  # CLS + the 4 visible patches
    assert p.hidden.shape == (12, n) and (p.hidden.sum(1) == 12).all()
    assert p.prediction.shape == p.target.shape == (12 * 12, 32)
    # the three masks of a sample differ, and each copy's target is its sample's
    assert not torch.equal(p.hidden[0], p.hidden[1])


def test_gather_and_scatter_rows_roundtrip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 2, generator=g)
    keep = torch.rand(3, 7, generator=g) < 0.5
    keep[0] = True
    values, real = gather_rows(x, keep)
    assert values.shape[1] == 7 and real is not None
    for b in range(3):
        torch.testing.assert_close(values[b][real[b]], x[b][keep[b]])
    back = scatter_rows(values, real, keep, torch.zeros_like(x))
    torch.testing.assert_close(back, x * keep[..., None])


# -- masking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid, ratio, min_block", [((14, 14), 0.6, 16), ((8, 8), 0.6, 5), ((4, 4), 0.6, 1)])
def test_block_mask_ratio_and_blocks(grid, ratio, min_block):
    mask = block_mask(64, grid, ratio, min_block, generator=torch.Generator().manual_seed(0))
    n = grid[0] * grid[1]
    assert mask.shape == (64, n)
    assert (mask.sum(1) == round(ratio * n)).all()  # exact count, so 2.0 can drop masked tokens densely
    # Blocks, not scattered patches: masked patches have more masked 4-neighbours than random ones would.
    m = mask.view(64, *grid).float()
    nb = F.conv2d(m[:, None], torch.tensor([[[[0, 1.0, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1)[:, 0]
    rand = torch.rand(64, n, generator=torch.Generator().manual_seed(1)).argsort(1) < round(ratio * n)
    rnb = F.conv2d(rand.view(64, 1, *grid).float(), torch.tensor([[[[0, 1.0, 0], [1, 0, 1], [0, 1, 0]]]]), padding=1)
    if min_block > 1:
        assert (nb * m).sum() / m.sum() > (rnb[:, 0] * rand.view(64, *grid)).sum() / rand.sum() + 0.3
    again = block_mask(64, grid, ratio, min_block, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_span_mask_statistics():
    # spans start at p = 0.065 of the frames: about 1 - (1 - 0.065) ** 10 = 49% covered (overlaps)
    g = torch.Generator().manual_seed(0)
    single = [span_mask(1, 500, 0.65, 10, generator=g).float().mean().item() for _ in range(100)]
    assert abs(sum(single) / 100 - 0.49) < 0.03
    mask = span_mask(32, 500, 0.65, 10, generator=g)
    counts = mask.sum(1)
    assert (counts == counts[0]).all()  # require_same_masks: every row cut to the smallest row's count
    assert 0.38 < counts[0] / 500 < 0.49
    lengths = torch.tensor([500] * 100 + [100] * 100)
    mixed = span_mask(200, 500, 0.65, 10, lengths=lengths, generator=torch.Generator().manual_seed(0))
    assert not mixed[100:, 100:].any()  # never beyond a row's length


# -- config --------------------------------------------------------------------------------------


def test_per_modality_defaults_resolve():
    cfg = load_config({"model": {"arch": "data2vec", "depth": 12, "data2vec": {"modalities": ["image"]}},
                       "objectives": {"data2vec": 1.0}, "train": {"steps": 77}})  # fmt: skip
    d = cfg.model.data2vec
    assert (d.text.top_k, d.image.top_k, d.speech.top_k) == (None, 6, None)
    assert d.image.mask_length == round(16 * 64 / 196)  # BEiT's 16 of 196 patches, on our 8x8 grid
    assert (d.image.mask_prob, d.text.mask_prob, d.speech.mask_prob) == (0.6, 0.15, 0.65)
    assert (d.image.layer_norm, d.text.layer_norm, d.speech.layer_norm) == ("instance", "layer", "instance")
    assert d.ema_anneal_steps == 77 and (d.ema_decay, d.ema_end_decay) == (0.999, 0.9999)
    speech = load_config({"model": {"arch": "data2vec", "depth": 12, "data2vec": {"modalities": ["speech"]}},
                          "objectives": {"data2vec": 1.0}})  # fmt: skip
    assert speech.model.data2vec.speech.top_k == 8 and speech.model.speech is not None


def d2v(model: dict) -> dict:
    return {"model": {"arch": "data2vec", **model}, "objectives": {"data2vec": 1.0}}


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model": {"arch": "data2vec"}, "objectives": {"contrastive": 1.0}}, "arch data2vec trains with: data2vec$"),
        ({"objectives": {"data2vec": 1.0}}, "^objectives.data2vec needs model.arch data2vec;"),
        (d2v({"data2vec": {"image": {"layer_norm": "batch"}}}), r"model\.data2vec\.image\.layer_norm"),
        (d2v({"data2vec": {"modalities": ["speech", "image"]}}), "speech is trained on its own"),
        (d2v({"depth": 2, "data2vec": {"image": {"top_k": 3}}}), "top_k 3 exceeds depth 2"),
    ],
)
def test_config_errors(raw, match):
    with pytest.raises(ConfigError, match=match):
        load_config(raw)


# -- training ------------------------------------------------------------------------------------


def d2v_run(data, modalities=("image", "text"), **train):
    raw = tiny_run_config(data, **train)
    raw["model"] = {
        **raw["model"],
        "arch": "data2vec",
        "data2vec": {"modalities": list(modalities), "ema_decay": 0.9, "ema_end_decay": 0.99},
    }
    raw["objectives"] = {"data2vec": 1.0}
    return raw


def test_data2vec_resume_equals_uninterrupted_and_initialises_a_dual_encoder(tiny_data, tmp_path):
    cfg = load_config(d2v_run(tiny_data))
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "split", stop_after=3, progress=False)
    train(cfg, tmp_path / "split", resume=True, progress=False)
    a = load_file(latest_checkpoint(tmp_path / "whole") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["ema_updates"]) == 6
    name = "layers.0.streams.image.mlp.fc1.weight"
    assert not torch.equal(a[f"teacher.{name}"], a[f"encoder.{name}"])

    # The data2vec encoders start a dual encoder: every tensor but the contrastive head is copied.
    dual = load_config(tiny_run_config(tiny_data, steps=1, init_from=str(tmp_path / "whole")))
    train(dual, tmp_path / "dual", progress=False)
    assert (tmp_path / "dual" / "tokenizer.json").read_text() == (tmp_path / "whole" / "tokenizer.json").read_text()
    model = build_model(resolve(dual, tokenizer=load_tokenizer(tmp_path / "dual" / "tokenizer.json")))
    init_from(tmp_path / "whole", model)
    state = model.state_dict()
    assert {k.split(".")[0] for k in set(state) - set(a)} == {"contrastive"}
    for k in ("image_embed.proj.weight", "text_embed.tok.weight", "encoder.layers.1.streams.text.attn.qkv.weight"):
        assert torch.equal(state[k], a[k]), k


@pytest.mark.parametrize("modality", ["image", "text"])
def test_single_modality_runs_read_single_modality_data(tiny_data, tmp_path, modality):
    from mmtlab.data.loader import training_dataset

    cfg = load_config(d2v_run(tiny_data, (modality,), steps=2))
    data = training_dataset(cfg)
    assert type(data).__name__ == {"image": "ImagesOnly", "text": "CaptionsOnly"}[modality]
    result = train(cfg, tmp_path / modality, progress=False)
    assert math.isfinite(result.final_loss)
    model = mmtlab.load(tmp_path / modality)
    assert isinstance(model, Data2Vec) and model.modalities == (modality,)
