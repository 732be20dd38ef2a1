"""Memory and speed switches give the result of the switch being off: activation checkpointing,
torch.compile of the blocks, bf16 autocast, gradient accumulation."""

import json

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file
from test_distributed import global_batch, model_config
from torch import nn

from mmtlab.config import TrainConfig, load_config
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.train.blocks import apply_block_options, transformer_blocks
from mmtlab.train.checkpoint import latest_checkpoint


def loss_and_grads(switches: TrainConfig, autocast=False, dropout=0.1, compile_backend="inductor"):
    cfg = model_config({"contrastive": 1.0, "mlm": 0.5}, layout="mixed", dropout=dropout)
    torch.manual_seed(0)
    model = build_model(cfg)
    calls = []
    model.encoder.layers[-1].streams["shared"].ln_attn.register_forward_pre_hook(lambda *a: calls.append(1))
    apply_block_options(model, switches, compile_backend=compile_backend)
    torch.manual_seed(1)  # dropout
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        loss, _ = build_objectives(cfg)(model, global_batch(), torch.Generator().manual_seed(2))
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, len(calls), model


def test_activation_checkpointing_gives_the_same_gradients():
    loss, grads, calls, _ = loss_and_grads(TrainConfig())
    loss_ac, grads_ac, calls_ac, _ = loss_and_grads(TrainConfig(activation_checkpointing=True))
    assert calls_ac == 2 * calls  # the block really ran again in backward (a recomputation)...
    assert torch.equal(loss, loss_ac)  # ...with the same dropout masks, so bitwise the same
    assert all(torch.equal(grads[n], grads_ac[n]) for n in grads)


def test_compiled_blocks_match_eager():
    # aot_eager traces the blocks with dynamo and AOT autograd like the default inductor backend,
    # without its C++ compile (tens of seconds on 2 cores); inductor itself: see the README.
    loss, grads, _, _ = loss_and_grads(TrainConfig(), dropout=0.0)
    loss_c, grads_c, _, model = loss_and_grads(TrainConfig(compile=True), dropout=0.0, compile_backend="aot_eager")
    assert all(b._compiled_call_impl is not None for b in transformer_blocks(model))
    torch.testing.assert_close(loss_c, loss)
    for n in grads:
        torch.testing.assert_close(grads_c[n], grads[n], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_is_close_to_fp32():
    loss, grads, _, _ = loss_and_grads(TrainConfig(), dropout=0.0)
    loss_bf, grads_bf, _, _ = loss_and_grads(TrainConfig(), autocast=True, dropout=0.0)
    assert abs(float(loss_bf) - float(loss)) < 0.02 * float(loss)
    flat = torch.cat([g.flatten() for g in grads.values()])
    flat_bf = torch.cat([g.flatten().float() for g in grads_bf.values()])
    assert torch.nn.functional.cosine_similarity(flat, flat_bf, dim=0) > 0.99


class PerPairLoss(nn.Module):
    """A loss that is a mean over pairs, so k accumulated micro-batches of b pairs are exactly
    one batch of k x b pairs (contrastive is not: its negatives are the micro-batch)."""

    # the rest of the Objectives interface the loop calls
    def bind_data(self, dataset, tokenizer):
        pass

    def after_optimizer_step(self, model, step):
        pass

    def forward(self, model, batch, generator, dp=None):
        gap = (model.encode_image(batch.images) - model.encode_text(batch.tokens, batch.text_mask)).pow(2).sum(-1)
        return gap.mean(), {"per_pair": gap.mean().detach()}


def test_grad_accumulation_equals_one_large_batch(tiny_data, tmp_path, monkeypatch):
    import mmtlab.train.loop as loop

    monkeypatch.setattr(loop, "build_objectives", lambda cfg: PerPairLoss())
    runs, logs = {}, {}
    for name, (batch_size, accum) in {"large": (16, 1), "accumulated": (8, 2)}.items():
        raw = tiny_run_config(tiny_data, steps=3, batch_size=batch_size, grad_accum=accum, lr=1e-3)
        loop.train(load_config(raw), tmp_path / name, progress=False)
        runs[name] = load_file(latest_checkpoint(tmp_path / name) / "model.safetensors")
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        logs[name] = torch.tensor([[r["loss"], r["grad_norm"]] for r in rows if "loss" in r])
    # same losses and gradient norms (Adam alone would hide a gradient off by a constant factor)
    torch.testing.assert_close(logs["accumulated"], logs["large"], rtol=1e-5, atol=1e-6)
    large, accumulated = runs["large"], runs["accumulated"]
    for k in large:
        torch.testing.assert_close(accumulated[k], large[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flag", ["activation_checkpointing", "compile"])
def test_switches_are_config_flags(flag):
    assert getattr(load_config({"train": {flag: True}}).train, flag) is True
