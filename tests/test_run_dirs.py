"""Damaged or reused run directories and misused commands give one line, never a traceback, and
never lose the last good state: resume checks its config, falls back past a damaged checkpoint,
a failed attempt's tokenizer is not reused, a full disk is reported with what is safe."""

import errno
import json
import shutil

import pytest
import torch
import yaml
from conftest import cli_error, invoke, tiny_run_config
from safetensors.torch import load_file, save_file

from mmtlab.config import load_config
from mmtlab.rundir import checkpoint_dirs, latest_checkpoint
from mmtlab.train.loop import train


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6, copied fresh by each test."""
    root = tmp_path_factory.mktemp("trained")
    (root / "run.yaml").write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    invoke("train", root / "run.yaml", "--out", root / "run")
    return root


@pytest.fixture
def run(trained, tmp_path):
    shutil.copytree(trained / "run", tmp_path / "run")
    return tmp_path / "run"


def test_resume_refuses_a_different_config(run, trained, monkeypatch, capsys):
    code, err = cli_error(monkeypatch, capsys, "train", "--resume", "--out", run, "--set", "train.lr=0.5")
    assert code == 2 and "--resume continues" in err and "train.lr: 0.5 (run: 0.001)" in err
    code, err = cli_error(monkeypatch, capsys, "train", trained / "run.yaml", "--resume", "--out", run,
                          "--set", "model.width=64")  # fmt: skip
    assert code == 2 and "model.width: 64 (run: 32)" in err
    # the run's own config (given again, or not at all) resumes; how it runs may change
    invoke("train", trained / "run.yaml", "--resume", "--out", run, "--set", "train.steps=6")
    invoke("train", "--resume", "--out", run, "--set", "train.threads=1", "--set", "train.log_every=2")
    assert load_config(run / "config.yaml").train.threads == 1


def test_resume_falls_back_past_a_damaged_checkpoint(run, monkeypatch, capsys):
    first, last = checkpoint_dirs(run)
    (last / "model.safetensors").write_bytes(b"\x00" * 10)  # truncated
    cfg = load_config(run / "config.yaml")
    cfg.train.steps = 7
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = train(cfg, run, resume=True, progress=False)
    assert result.steps == 7
    assert "damaged" in capsys.readouterr().err
    state = json.loads((latest_checkpoint(run) / "state.json").read_text())
    assert state["step"] == 7


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncate", r"not a readable safetensors file"),
        ("empty", r"not a readable safetensors file"),
        ("extra_key", r"does not match the model \(missing \[\], unexpected \['bogus'\]\)"),
        ("missing_key", r"does not match the model \(missing \['contrastive\.logit_scale'\]"),
        ("wrong_shape", r"tensors of other shapes"),
        ("nan", r"non-finite \(NaN/inf\) values"),
        ("tokenizer", r"tokenizer\.json: not a valid tokenizer\.json"),
        ("config", r"config\.yaml: not valid YAML"),
    ],
)
def test_damaged_run_is_one_line_in_eval(run, damage, match, monkeypatch, capsys):
    weights = latest_checkpoint(run) / "model.safetensors"
    w = load_file(weights)
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "extra_key":
        save_file({**w, "bogus": torch.zeros(1)}, weights)
    elif damage == "missing_key":
        save_file({k: v for k, v in w.items() if k != "contrastive.logit_scale"}, weights)
    elif damage == "wrong_shape":
        k = "text_embed.tok.weight"
        save_file({**w, k: torch.zeros(3, 3)}, weights)
    elif damage == "nan":
        k = "text_embed.tok.weight"
        save_file({**w, k: torch.full_like(w[k], float("nan"))}, weights)
    elif damage == "tokenizer":
        (run / "tokenizer.json").write_text("{not json")
    elif damage == "config":
        (run / "config.yaml").write_text("model: [unclosed")
    code, err = cli_error(monkeypatch, capsys, "eval", "retrieval", run)
    assert code == 2 and len(err.splitlines()) == 1, err
    import re

    assert re.search(match, err), err


def test_resume_with_every_checkpoint_damaged_is_one_line(run, monkeypatch, capsys):
    for ckpt in checkpoint_dirs(run):
        (ckpt / "state.json").write_text("{")
    code, err = cli_error(monkeypatch, capsys, "train", "--resume", "--out", run)
    assert code == 2 and "no earlier checkpoint loads" in err


def test_a_failed_attempts_tokenizer_is_not_reused(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_text("stale: left by an attempt that died before its first checkpoint")
    train(load_config(tiny_run_config(tiny_data, steps=1)), run, progress=False)
    assert json.loads((run / "tokenizer.json").read_text())["model"]["type"] == "WordPiece"


def test_full_disk_outside_a_checkpoint_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    import mmtlab.train.loop as loop

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(loop, "atomic_write_text", full)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_run_config(tiny_data)))
    code, err = cli_error(monkeypatch, capsys, "train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and "could not write to" in err and "No space left on device" in err
    assert "no earlier checkpoint exists" in err and "--resume" in err
    assert not (tmp_path / "run" / "tokenizer.json.tmp").exists()


def test_init_from_a_missing_run_names_it(tiny_data, tmp_path, monkeypatch, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_run_config(tiny_data, init_from=str(tmp_path / "gone"))))
    (tmp_path / "tokenizer.json").write_text("{}")  # the parent's file must not be taken for the run's
    code, err = cli_error(monkeypatch, capsys, "train", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 2 and f"train.init_from: {tmp_path / 'gone'} is neither a run directory" in err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--max-images", "0"], r"--max-images must be a whole number >= 1, got 0"),
        (["--max-images", "-5"], r"--max-images must be a whole number >= 1, got -5"),
        (["--image-size", "0"], r"--image-size must be a multiple of the 16-px patch"),
        (["--image-size", "7"], r"--image-size must be a multiple of the 16-px patch"),
        (["--mode", "sideways"], r"--mode 'sideways': choose one of dual, cross, rerank"),
    ],
)
def test_bad_eval_arguments_are_one_line(run, args, match, monkeypatch, capsys):
    import re

    code, err = cli_error(monkeypatch, capsys, "eval", "retrieval", run, *args)
    assert code == 2 and re.search(match, err), err


def test_evaluating_a_run_still_in_training_says_so(run, capsys):
    """A live process's PID in RUN/.lock means the newest checkpoint is not the final one."""
    import subprocess
    import sys

    from mmtlab.eval.runs import load_run

    load_run(run)
    assert "still training" not in capsys.readouterr().err
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{trainer.pid}\n")
        load_run(run)
        err = capsys.readouterr().err
        assert f"still training (PID {trainer.pid})" in err and "step 6 of 6" in err
    finally:
        trainer.kill()
        trainer.wait()
    load_run(run)  # the PID is dead now: an ordinary finished run
    assert "still training" not in capsys.readouterr().err
