import json
import shutil

import pytest
import torch
from conftest import tiny_run_config
from safetensors.torch import load_file

from mmtlab.config import load_config
from mmtlab.train.checkpoint import checkpoint_dirs, latest_checkpoint
from mmtlab.train.loop import RunDirError, train


def final_weights(run_dir):
    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


@pytest.mark.parametrize("objectives", [{"contrastive": 1.0}, {"contrastive": 1.0, "mlm": 0.5}])
def test_resume_equals_uninterrupted(tiny_data, tmp_path, objectives):
    raw = tiny_run_config(tiny_data) | {"objectives": objectives}
    raw["model"] = raw["model"] | {"dropout": 0.1}  # dropout must replay too
    cfg = load_config(raw)
    whole = train(cfg, tmp_path / "whole", progress=False)
    assert whole.steps == 6
    part = train(cfg, tmp_path / "split", stop_after=4, progress=False)
    assert part.steps == 4
    resumed = train(cfg, tmp_path / "split", resume=True, progress=False)
    assert resumed.steps == 6
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = load_file(latest_checkpoint(tmp_path / "whole") / "optimizer.safetensors")
    opt_b = load_file(latest_checkpoint(tmp_path / "split") / "optimizer.safetensors")
    assert all(torch.equal(opt_a[k], opt_b[k]) for k in opt_a)
    # metrics.jsonl of the resumed run has each step once
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if s > 0]
    assert logged == sorted(set(logged))


def test_run_dir_is_not_silently_overwritten(tiny_data, tmp_path):
    cfg = load_config(tiny_run_config(tiny_data, steps=2))
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunDirError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


def test_checkpoints_are_pruned_and_complete(tiny_data, tmp_path):
    cfg = load_config(tiny_run_config(tiny_data, steps=6, checkpoint_every=1, keep_checkpoints=2))
    train(cfg, tmp_path / "run", progress=False)
    dirs = checkpoint_dirs(tmp_path / "run")
    assert [d.name for d in dirs] == ["step_00000005", "step_00000006"]
    for d in dirs:
        assert {p.name for p in d.iterdir()} == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))


def copy_with_corrupt_image(src, dst, split):
    shutil.copytree(src, dst)
    data = json.loads(next(dst.glob("dataset_*.json")).read_text())
    first = next(im for im in data["images"] if im["split"] == split)
    path = dst / "images" / first.get("filepath", "") / first["filename"]
    path.write_bytes(b"this is not a png")
    return first


def test_corrupt_image_is_skipped_and_counted(tiny_data, tmp_path):
    data = tmp_path / "data"
    copy_with_corrupt_image(tiny_data, data, "pretrain")
    raw = tiny_run_config(data, steps=2, batch_size=32)
    raw["data"]["max_train_pairs"] = 32  # one batch holds every pair, so the bad image is met every step
    result = train(load_config(raw), tmp_path / "run", progress=False)
    assert result.skipped_images == 2


def test_corrupt_image_in_eval_is_skipped_and_counted(tiny_data, tmp_path):
    from mmtlab.data.sources import load_split
    from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece
    from mmtlab.eval.retrieval import embed_records, retrieval_metrics
    from mmtlab.models import build_model

    data = tmp_path / "data"
    copy_with_corrupt_image(tiny_data, data, "test")
    cfg = load_config(tiny_run_config(data))
    records = load_split(cfg.data, "test")
    tok = TextTokenizer(train_wordpiece([c for r in records for c in r.captions], 200), 24)
    cfg.model.text.vocab_size = tok.vocab_size
    r = retrieval_metrics(embed_records(build_model(cfg), tok, records, progress=False))
    assert r["skipped_images"] == 1
    assert r["n_images"] == len(records) - 1
    assert r["n_texts"] == 5 * (len(records) - 1)


def test_bf16_autocast_trains(tiny_data, tmp_path):
    result = train(load_config(tiny_run_config(tiny_data, steps=2, precision="bf16")), tmp_path / "r", progress=False)
    assert torch.isfinite(torch.tensor(result.final_loss))


def test_grad_accumulation_counts_pairs(tiny_data, tmp_path):
    cfg = load_config(tiny_run_config(tiny_data, steps=2, batch_size=8, grad_accum=2))
    train(cfg, tmp_path / "r", progress=False)
    state = json.loads((latest_checkpoint(tmp_path / "r") / "state.json").read_text())
    assert state["samples"] == 2 * 8 * 2


def test_init_from_copies_matching_weights_and_tokenizer(tiny_data, tmp_path):
    base = train(load_config(tiny_run_config(tiny_data, steps=2)), tmp_path / "base", progress=False)
    raw = tiny_run_config(tiny_data, steps=1, init_from=str(base.run_dir))
    raw["objectives"] = {"contrastive": 1.0, "mlm": 1.0}  # adds an MLM head that starts fresh
    train(load_config(raw), tmp_path / "ft", stop_after=0, progress=False)
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (base.run_dir / "tokenizer.json").read_text()
    from mmtlab.models import build_model
    from mmtlab.train.checkpoint import init_from

    cfg = load_config(tmp_path / "ft" / "config.yaml")
    model = build_model(cfg)
    copied = init_from(base.run_dir, model)
    a = final_weights(base.run_dir)
    assert copied == len(a)
    assert torch.equal(model.state_dict()["text_embed.tok.weight"], a["text_embed.tok.weight"])
    with pytest.raises(ValueError, match="other shapes"):
        init_from(base.run_dir, build_model(load_config(tmp_path / "ft" / "config.yaml", ["model.width=48"])))


def test_wandb_logger_offline_logs_and_resumes_the_same_run(tiny_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(tiny_run_config(tiny_data, loggers=["tensorboard", "wandb"]))
    train(cfg, tmp_path / "r", stop_after=3, progress=False)
    run_id = (tmp_path / "r" / "wandb_id").read_text().strip()
    train(cfg, tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / "wandb_id").read_text().strip() == run_id  # one W&B run across the resume
    runs = list((tmp_path / "r" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert runs and any(f.suffix == ".wandb" for r in runs for f in r.iterdir())
