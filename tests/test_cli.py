"""End-to-end runs of the command line on tiny configs."""

import json

import yaml
from conftest import invoke, tiny_run_config
from typer.testing import CliRunner

import mmtlab
from mmtlab.cli import app

runner = CliRunner()  # for the runs that must fail; conftest.invoke for those that must not


def test_train_eval_report_dual_encoder(tiny_data, tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    run = tmp_path / "run"
    invoke("train", cfg, "--out", run, "--set", "train.steps=4")
    assert {"config.yaml", "tokenizer.json", "metrics.jsonl", "checkpoints"} <= {p.name for p in run.iterdir()}
    out = invoke("eval", "retrieval", run, "--split", "test")
    assert "t2i_r1" in out
    r = json.loads((run / "eval" / "retrieval.json").read_text())
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum", "chance"} <= r.keys()
    assert r["n_texts"] == 5 * r["n_images"]
    assert (run / "eval" / "retrieval_examples.png").stat().st_size > 1000
    invoke("report", run)
    text = (run / "report.md").read_text()
    assert "Zero-shot retrieval" in text and (run / "training.png").exists()

    model = mmtlab.load(run)
    tokens, mask = model.tokenizer(["a red apple on a blue background"])
    assert model.encode_text(tokens, mask).shape == (1, 16)


def test_merged_mlm_eval(tiny_data, tmp_path):
    raw = tiny_run_config(tiny_data, steps=3)
    raw["model"]["layout"] = "merged"
    raw["objectives"] = {"mlm": 1.0}
    cfg = tmp_path / "mlm.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    invoke("train", cfg, "--out", run)
    invoke("eval", "mlm", run)
    r = json.loads((run / "eval" / "mlm.json").read_text())
    assert r["n_masked_tokens"] > 0
    assert r["bits_per_token_with_image"] != r["bits_per_token_without_image"]
    result = runner.invoke(app, ["eval", "retrieval", str(run)])
    assert result.exit_code != 0  # no contrastive head: a clear error, not a crash
    invoke("report", run)
    assert "Masked-token loss" in (run / "report.md").read_text()


def test_layout_command():
    out = invoke("layout", "merged-tiny")
    assert "text, image" in out


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tmp_path / "nowhere")))
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mmtlab.cli", "train", str(cfg), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "mmtlab data build emoji-scenes" in proc.stderr


def test_run_report_html_is_self_contained(tiny_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=2)))
    invoke("train", cfg, "--out", tmp_path / "run")
    invoke("eval", "retrieval", tmp_path / "run", "--max-images", 12)
    invoke("report", tmp_path / "run")
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 2  # training curves and retrieval examples, embedded
    assert "<table>" in page and "<h2>Zero-shot retrieval" in page and "](" not in page
