"""End to end on tiny configs: train decoder families, caption, VQA fine-tuning, retrieval at a
new resolution, the comparison study's configs."""

import json

import pytest
import torch
import yaml
from conftest import invoke, tiny_run_config
from typer.testing import CliRunner

import mmtlab
from mmtlab.cli import app

runner = CliRunner()  # for the runs that must fail; conftest.invoke for those that must not


def decoder_config(data_root, arch="mammut", **train):
    raw = tiny_run_config(data_root, **train)
    raw["model"] = {
        **{k: v for k, v in raw["model"].items() if k != "layout"},
        "arch": arch,
        "pool": "mean",
        "layout_args": {"vision_depth": 1},
        "image": {"size": 64, "patch": 16, "cpe": True},
    }
    raw["objectives"] = {"contrastive": 1.0, "caption": 2.0}
    return raw


@pytest.mark.slow
def test_mammut_train_caption_vqa_and_retrieval_from_the_command_line(tiny_data, tmp_path):
    cfg = tmp_path / "mammut.yaml"
    cfg.write_text(yaml.safe_dump(decoder_config(tiny_data)))
    run = tmp_path / "run"
    invoke("train", cfg, "--out", run, "--set", "train.steps=3")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/contrastive", "loss/caption"} <= metrics[-1].keys()

    image = next((tiny_data / "images" / "test").glob("*.png"))
    for method in ("greedy", "beam", "nucleus"):
        assert f"{image}:" in invoke("caption", run, "--image", image, "--method", method, "--max-tokens", "6")
    out = invoke("caption", run, "--image", image, "--prompt", "question: how many things are in the picture? answer:")
    assert f"{image}:" in out

    invoke("eval", "caption", run, "--max-images", "6", "--method", "greedy")
    cap = json.loads((run / "eval" / "caption.json").read_text())
    assert cap["n_images"] == 6 and {"bleu4", "cider", "examples"} <= cap.keys()
    assert 0 <= cap["bleu4"] <= 100 and cap["cider"] >= 0

    invoke("eval", "vqa", run, "--finetune-steps", "2", "--max-questions", "12")
    vqa = json.loads((run / "eval" / "vqa.json").read_text())
    assert vqa["n_questions"] == 12 and 0 <= vqa["accuracy"] <= 100 and vqa["model"] == str(run / "vqa")
    assert (run / "vqa" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    assert yaml.safe_load((run / "vqa" / "config.yaml").read_text())["data"]["task"] == "vqa"

    invoke("eval", "retrieval", run, "--image-size", "96")
    r96 = json.loads((run / "eval" / "retrieval_96px.json").read_text())
    assert r96["image_size"] == 96 and r96["n_texts"] == 5 * r96["n_images"]


def test_wrong_arch_for_captioning_is_a_clear_error(tiny_data, tmp_path):
    cfg = tmp_path / "dual.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=1)))
    run = tmp_path / "run"
    invoke("train", cfg, "--out", run)
    result = runner.invoke(app, ["eval", "caption", str(run)])
    assert (
        result.exit_code != 0
        and "eval caption needs a model.arch mammut or coca or dual_captioner run, not 'encoder'"
        in str(result.exception)
    )
    result = runner.invoke(app, ["caption", str(run), "--image", "x.png", "--method", "sideways"])
    assert result.exit_code != 0 and "choose greedy, beam or nucleus" in str(result.exception)


@pytest.mark.slow
def test_cpe_model_trained_at_64px_keeps_its_recall_at_96px(tiny_data, tmp_path):
    """A MaMMUT trained at 64 px with cropped positional embeddings memorises 24 pairs; at 96 px
    (a 6x6 patch grid instead of 4x4) it runs and recalls them with at most 25 points less R@1."""
    from mmtlab.data.sources import load_split
    from mmtlab.eval.retrieval import evaluate_retrieval
    from mmtlab.train.loop import train

    raw = decoder_config(tiny_data, steps=30, batch_size=24, lr=3e-3, warmup_steps=5, checkpoint_every=30)
    raw["data"]["max_train_pairs"] = 24
    train(mmtlab.load_config(raw), tmp_path / "run", progress=False)
    model = mmtlab.load(tmp_path / "run")
    records = load_split(model.run_config.data, "pretrain")[:24]
    r1 = {}
    for size in (64, 96):
        model.cfg.image.size = size
        r = evaluate_retrieval(model, model.tokenizer, records, progress=False)
        r1[size] = (r["t2i_r1"] + r["i2t_r1"]) / 2
    assert r1[64] >= 60, r1  # it did learn the pairs
    assert r1[96] >= r1[64] - 25, r1
    # Fine-tuning at 96 px starts from the positional grid resampled to 6x6.
    from mmtlab.models import build_model
    from mmtlab.models.vision import sample_pos_grid
    from mmtlab.train.checkpoint import init_from

    big = build_model(mmtlab.load_config(tmp_path / "run" / "config.yaml", ["model.image.size=96"]))
    init_from(tmp_path / "run", big)
    trained = mmtlab.load(tmp_path / "run").image_embed.pos
    torch.testing.assert_close(big.image_embed.pos.detach(), sample_pos_grid(trained.detach(), (6, 6), None))


@pytest.mark.parametrize("name", ["mammut-vs-coca", "mammut-vs-coca-small"])
def test_comparison_study_validates(name):
    from mmtlab.config import CONFIG_DIR
    from mmtlab.study import expand, load_study
    from mmtlab.study.spec import cell_config

    spec, base = load_study(CONFIG_DIR / "studies" / f"{name}.yaml")
    cells = expand(spec)
    archs = {cell_config(spec, base, c, 0).model.arch for c in cells}
    assert archs == {"mammut", "coca", "dual_captioner"}
    assert {"retrieval", "caption", "vqa"} <= set(spec.evals)
