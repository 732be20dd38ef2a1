"""Linear probes and the data2vec-init study, end to end on tiny runs."""

import json

import pytest
import torch
import yaml
from conftest import tiny_run_config
from typer.testing import CliRunner

import mmtlab
from mmtlab.cli import app
from mmtlab.config import ConfigError, load_config
from mmtlab.data.speech import SHIPPED, SpokenSet
from mmtlab.eval.probe import keyword_spotting, linear_probe
from mmtlab.models import build_model
from mmtlab.study import load_study, run_study


def test_linear_probe_on_separable_and_on_random_labels():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 5
    y = torch.arange(400) % 4
    x = centers[y] + torch.randn(400, 8, generator=g)
    sep = linear_probe(x[:300], y[:300] * 7, x[300:], y[300:] * 7)  # any integer labels
    assert sep["accuracy"] == 100.0
    noise = linear_probe(torch.randn(300, 8, generator=g), y[:300], torch.randn(100, 8, generator=g), y[300:])
    assert noise["accuracy"] < 45  # chance is 25%
    unseen = linear_probe(x[:300], y[:300], x[300:], y[300:] + 10)  # labels never trained on: errors
    assert unseen["accuracy"] == 0.0


def d2v_run(data, modalities, **train):
    raw = tiny_run_config(data, **train)
    raw["model"] = {**raw["model"], "arch": "data2vec", "data2vec": {"modalities": modalities}}
    raw["objectives"] = {"data2vec": 1.0}
    return raw


def test_probe_cli_compares_trained_and_random_init(tiny_data, tmp_path):
    cfg = tmp_path / "d2v.yaml"
    cfg.write_text(yaml.safe_dump(d2v_run(tiny_data, ["image", "text"], steps=2)))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(cfg), "--out", str(run)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["eval", "probe", str(run), "--n-train", "80", "--n-test", "40"])
    assert result.exit_code == 0, result.output
    assert "image_category" in result.output and "random init" in result.output
    probe = json.loads((run / "eval" / "probe.json").read_text())
    # pool: cls (the default) adds probes of the CLS token beside the patch mean
    tasks = ("image_sprite", "image_category", "image_count", "image_sprite_cls", "text_style")
    assert set(tasks) <= probe.keys()
    for task in tasks:
        r = probe[task]
        assert 0 <= r["trained"]["accuracy"] <= 100 and 0 <= r["random"]["accuracy"] <= 100
        assert r["n_test"] == 40 and 0 <= r["majority"] <= 100  # tiny data: one count can be all
    assert probe["text_style"]["n_train"] == 80

    # A single-style build has no style probe; the image probes still run.
    from mmtlab.data.emoji_scenes import build_emoji_scenes

    single = tmp_path / "alt-only"
    build_emoji_scenes(single, size=120, eval_size=40, heldout_size=4, pretrain_styles={"alt_text": 1}, progress=False)
    args = ["eval", "probe", str(run), "--data", str(single), "--n-train", "80", "--n-test", "40"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "text_style: skipped" in result.output and "image_sprite" in result.output
    assert "skipped" in json.loads((run / "eval" / "probe.json").read_text())["text_style"]


def test_image_probe_labels_identity_and_count(tiny_data):
    from mmtlab.data.sources import load_split
    from mmtlab.eval.probe import image_task

    cfg = load_config(tiny_run_config(tiny_data))
    train, test, tasks = image_task(cfg, 60, 30)
    recs = [r for r in load_split(cfg.data, "test") if r.labels and r.boxes][:30]
    assert [r.path for r in test] == [r.path for r in recs]
    assert tasks["count"][1].tolist() == [len(r.labels) for r in recs]
    largest = [
        r.labels[
            max(range(len(r.boxes)), key=lambda i: (r.boxes[i][2] - r.boxes[i][0]) * (r.boxes[i][3] - r.boxes[i][1]))
        ]
        for r in recs
    ]
    assert tasks["sprite"][1].tolist() == largest


def test_keyword_spotting_is_leave_one_voice_out():
    spoken = SpokenSet(SHIPPED)
    spoken.utterances = [u for u in spoken.utterances if u["kind"] == "keyword" and u["label"] < 3]
    cfg = load_config(
        {
            "model": {
                "arch": "data2vec",
                "width": 16,
                "depth": 1,
                "heads": 2,
                "speech": {"conv_layers": [[8, 10, 5]] + [[8, 3, 2]] * 4 + [[8, 2, 2]] * 2, "conv_pos_groups": 4},
                "data2vec": {"modalities": ["speech"]},
            },
            "objectives": {"data2vec": 1.0},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    r = keyword_spotting({"random": model}, spoken)
    assert r["folds"] == sorted({u["voice"] for u in spoken.utterances}) and len(r["folds"]) == 4
    assert r["n_test"] == 3 * 16 and r["majority"] == pytest.approx(100 / 3)
    assert 0 <= r["random"]["accuracy"] <= 100


def write_init_study(tmp_path, data, **extra):
    (tmp_path / "d2v.yaml").write_text(yaml.safe_dump(d2v_run(data, ["image", "text"], steps=2)))
    (tmp_path / "dual.yaml").write_text(yaml.safe_dump(tiny_run_config(data, steps=2)))
    spec = {
        "name": "init",
        "base": "dual.yaml",
        "pretrain": {"d2v": {"base": "d2v.yaml", "set": ["train.steps=3"]}},
        "axes": {"init": {"random": {}, "data2vec": {"train.init_from": "{pretrain.d2v}"}}},
        "evals": {"retrieval": {"split": "test", "examples": False}},
        "metrics": ["retrieval.t2i_r1"],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_study_pretrains_once_and_initialises_cells_from_it(tiny_data, tmp_path):
    out = run_study(write_init_study(tmp_path, tiny_data), tmp_path / "out")
    pre = out / "pretrain" / "d2v"
    assert mmtlab.load(pre).cfg.arch == "data2vec" and int(mmtlab.load(pre).ema_updates) == 3
    init_cfg = yaml.safe_load((out / "runs" / "data2vec" / "seed_0" / "config.yaml").read_text())
    assert init_cfg["train"]["init_from"] == str(pre)
    random_cfg = yaml.safe_load((out / "runs" / "random" / "seed_0" / "config.yaml").read_text())
    assert random_cfg["train"]["init_from"] is None
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["cell"]["init"] for r in rows] == ["random", "data2vec"] and all(r["seeds"] == 1 for r in rows)
    stamp = (pre / "metrics.jsonl").stat().st_mtime_ns
    run_study(write_init_study(tmp_path, tiny_data), tmp_path / "out")  # resumable: nothing retrained
    assert (pre / "metrics.jsonl").stat().st_mtime_ns == stamp


def test_study_pretrain_reference_must_exist(tiny_data, tmp_path):
    path = write_init_study(tmp_path, tiny_data, pretrain={})
    with pytest.raises(ConfigError, match=r"\{pretrain\.d2v\} is used but pretrain has no run 'd2v'"):
        load_study(path)
