"""Data parallelism on 2 CPU processes (gloo) against one process: gradients, loss curves and
checkpoints that move between world sizes."""

import pytest
import torch

from mmtlab.config import load_config
from mmtlab.data.pairs import Batch
from mmtlab.models import build_model
from mmtlab.objectives import StepContext, build_objectives
from mmtlab.objectives.contrastive import info_nce
from mmtlab.train.distributed import launch_local

WORLD = 2


def model_config(objectives, layout="modality_specific", dropout=0.0):
    return load_config(
        {
            "seed": 0,
            "model": {
                "layout": layout,
                "layout_args": {"k": 1} if layout == "mixed" else {},  # 1 modality-specific + 1 merged layer
                "width": 32,
                "depth": 2,
                "heads": 2,
                "embed_dim": 16,
                "dropout": dropout,
                "image": {"size": 32, "patch": 16},
                "text": {"max_len": 12, "vocab_size": 60},
            },
            "objectives": objectives,
        }
    )


def global_batch(n=8, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 12, (n,), generator=g)
    tokens = torch.randint(5, 60, (n, 12), generator=g)
    mask = torch.arange(12)[None] < lengths[:, None]
    tokens[:, 0] = 2
    tokens = tokens.masked_fill(~mask, 0)
    return Batch(torch.randn(n, 3, 32, 32, generator=g), tokens, mask, torch.arange(n))


def shard(batch: Batch, rank: int, world: int) -> Batch:
    n = len(batch) // world
    rows = slice(rank * n, (rank + 1) * n)
    return Batch(batch.images[rows], batch.tokens[rows], batch.text_mask[rows], batch.image_index[rows])


def full_grads(model) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        g = p.grad
        if isinstance(g, DTensor):
            g = g.full_tensor()  # a collective: every rank calls it, in the same order
        out[name] = None if g is None else g.detach().clone()
    return out


def _distributed_grads(mode, objectives, layout, micro_steps):
    """Each rank: its shard of the global batch (in `micro_steps` pieces), one step's gradients."""
    from mmtlab.config import TrainConfig
    from mmtlab.train.distributed import parallelize, setup

    dp = setup()  # joins the process group the caller initialised
    cfg = model_config(objectives, layout)
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = build_objectives(cfg)
    par = parallelize(model, dp, TrainConfig(data_parallel=mode))
    mine = shard(global_batch(), dp.rank, dp.world)
    losses = []
    for micro in range(micro_steps):
        piece = shard(mine, micro, micro_steps)
        par.begin_micro_step(last=micro == micro_steps - 1)
        gen = torch.Generator().manual_seed(100 + dp.rank * micro_steps + micro)
        loss, _ = objective(model, piece, gen, dp)
        (loss / micro_steps).backward()
        losses.append(float(loss.detach()))
    par.end_backward()
    return full_grads(model), losses


_references: dict = {}


def reference_grads(objectives, layout, micro_steps):
    key = (tuple(objectives.items()), layout, micro_steps)
    if key not in _references:
        _references[key] = _reference_grads(objectives, layout, micro_steps)
    return _references[key]


def _reference_grads(objectives, layout, micro_steps):
    """One process: contrastive over each micro-step's global batch (all ranks' rows), other
    objectives averaged over the ranks' pieces with the ranks' generators."""
    cfg = model_config(objectives, layout)
    torch.manual_seed(0)
    model = build_model(cfg)
    weights = {k: v.weight for k, v in cfg.objectives.items()}
    full = global_batch()
    per_rank = [shard(full, r, WORLD) for r in range(WORLD)]
    total = 0.0
    for micro in range(micro_steps):
        pieces = [shard(b, micro, micro_steps) for b in per_rank]
        if "contrastive" in weights:
            images = torch.cat([p.images for p in pieces])
            texts = (torch.cat([p.tokens for p in pieces]), torch.cat([p.text_mask for p in pieces]))
            emb_i, emb_t = model.encode_image(images), model.encode_text(*texts)
            total = total + weights["contrastive"] * info_nce(emb_i, emb_t, model.contrastive.scale())
        if "mlm" in weights:
            from mmtlab.objectives.mlm import MLM

            for r, piece in enumerate(pieces):
                gen = torch.Generator().manual_seed(100 + r * micro_steps + micro)
                torch.randperm(len(weights), generator=gen)  # Objectives first draws the order of the losses
                total = total + weights["mlm"] * MLM()(StepContext(model, piece, gen)) / WORLD
    (total / micro_steps).backward()
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


GRAD_CASES = {
    # gather-with-grad + local loss: 2 x 4 pairs give the gradient of InfoNCE over all 8 pairs
    "ddp-contrastive": ("ddp", {"contrastive": 1.0}, "modality_specific", 1),
    "fsdp-contrastive": ("fsdp", {"contrastive": 1.0}, "modality_specific", 1),
    # contrastive (encode_image + encode_text) and MLM (joint masked pass + mlm_logits, which reads
    # the tied embedding outside any forward) in one backward, over two accumulated micro-steps
    "ddp-passes": ("ddp", {"contrastive": 1.0, "mlm": 0.5}, "mixed", 2),
    "fsdp-passes": ("fsdp", {"contrastive": 1.0, "mlm": 0.5}, "mixed", 2),
}


def _all_grad_cases():
    return {name: _distributed_grads(*case) for name, case in GRAD_CASES.items()}


@pytest.fixture(scope="module")
def distributed_grads():
    return launch_local(_all_grad_cases, WORLD, threads=1)  # one launch for every case: processes are slow to start


@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradients_equal_single_process(distributed_grads, case):
    _, objectives, layout, micro_steps = GRAD_CASES[case]
    ref = reference_grads(objectives, layout, micro_steps)
    for rank in range(WORLD):
        grads, _ = distributed_grads[rank][case]
        assert grads.keys() == ref.keys()
        for name, g in ref.items():
            got = grads[name]
            assert (got is None) == (g is None), name
            if g is not None:
                torch.testing.assert_close(got, g, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------------ whole runs


def _train_runs(jobs):
    """Each rank: train() for every (raw config, run dir, kwargs) job, in this process group."""
    from mmtlab.train.loop import train

    return [train(load_config(raw), run_dir, progress=False, **kw).final_loss for raw, run_dir, kw in jobs]


def run_config(data, mode):
    from conftest import tiny_run_config

    raw = tiny_run_config(data, steps=4, batch_size=16, checkpoint_every=2, data_parallel=mode, threads=1)
    raw["model"]["dropout"] = 0.0
    return raw


def losses(run_dir):
    import json

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def weights(run_dir):
    from safetensors.torch import load_file

    from mmtlab.train.checkpoint import latest_checkpoint

    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


def assert_same_run(a, b, rtol=1e-4):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 4
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=rtol, atol=1e-5)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """One process: a whole run, and a run stopped after 2 of 4 steps. Two processes: a ddp run,
    an fsdp run stopped after 2 steps, and the stopped one-process run continued under ddp and fsdp."""
    import shutil

    from mmtlab.train.loop import train

    root = tmp_path_factory.mktemp("runs")
    single, ddp = run_config(tiny_data, "ddp"), run_config(tiny_data, "ddp")
    train(load_config(single), root / "single", progress=False)
    train(load_config(single), root / "single-then-ddp", stop_after=2, progress=False)
    shutil.copytree(root / "single-then-ddp", root / "single-then-fsdp")
    jobs = [
        (ddp, root / "ddp", {}),
        (run_config(tiny_data, "fsdp"), root / "fsdp-then-single", {"stop_after": 2}),
        (ddp, root / "single-then-ddp", {"resume": True}),
        (run_config(tiny_data, "fsdp"), root / "single-then-fsdp", {"resume": True}),
    ]
    launch_local(_train_runs, WORLD, jobs, threads=1)
    return root


def test_ddp_run_has_the_loss_curve_of_one_process(runs):
    # same seed, same global batch of 16 (2 x 8 pairs): same losses and weights up to float rounding
    assert_same_run(runs / "single", runs / "ddp")


def test_sharded_checkpoint_resumes_on_another_world_size(runs):
    from mmtlab.train.checkpoint import checkpoint_dirs
    from mmtlab.train.loop import train

    run = runs / "fsdp-then-single"
    (ckpt,) = checkpoint_dirs(run)
    assert ckpt.name == "step_00000002"
    assert sorted(p.name for p in (ckpt / "dcp").iterdir())[0].endswith(".safetensors")  # shards, no pickle
    assert len(list((ckpt / "dcp").glob("*.safetensors"))) == WORLD  # written by both ranks
    # 2 fsdp processes for steps 1-2, one plain process for steps 3-4 = one process throughout
    train(load_config(run / "config.yaml"), run, resume=True, progress=False)
    assert_same_run(runs / "single", run)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_single_process_checkpoint_resumes_under_torchrun(runs, mode):
    assert_same_run(runs / "single", runs / f"single-then-{mode}")


def test_torchrun_command_of_the_readme(tiny_data, tmp_path):
    """`torchrun --standalone --nproc-per-node 2 -m mmtlab.cli train ...`, as documented."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
    config = tmp_path / "run.yaml"
    raw = run_config(tiny_data, "fsdp")
    raw["train"]["steps"] = 2
    config.write_text(yaml.safe_dump(raw))
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "mmtlab.cli", "train", str(config)]
    out = ["--out", str(tmp_path / "run"), "--resume"]
    done = subprocess.run([*cmd, *out], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 steps") == 1  # rank 0 speaks for the run
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "dcp").is_dir()
