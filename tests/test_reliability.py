"""Runs that never lose work (issue 21): divergence policy and strict metrics JSON, pruning that a
kill cannot leave half done, Ctrl-C, file permissions, the run-directory lock, and damaged-shard
counts of streamed data."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import cli_error, tiny_run_config
from safetensors.torch import load_file

from mmtlab.config import load_config
from mmtlab.train import checkpoint as ckpt_mod
from mmtlab.train.checkpoint import checkpoint_dirs, latest_checkpoint, remove_partial_checkpoints, save_checkpoint
from mmtlab.train.divergence import DivergedError, NonFiniteGuard
from mmtlab.train.loop import RunDirError, train


def strict_lines(path):
    def reject(token):
        raise ValueError(f"not strict JSON: {token}")

    return [json.loads(line, parse_constant=reject) for line in path.read_text().splitlines()]


def diverging_run(tiny_data, run, policy):
    """4 good steps (checkpoints at 2 and 4, keep 1), then lr 1e10 in the run's config.yaml: the
    resumed run's loss stops being finite a step or two later."""
    raw = tiny_run_config(tiny_data, steps=10, checkpoint_every=2, keep_checkpoints=1, threads=1)
    train(load_config(raw), run, stop_after=4, progress=False)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["train"]["lr"] = 1e10
    if policy != "stop":
        saved["train"]["on_nonfinite"] = policy
    (run / "config.yaml").write_text(yaml.safe_dump(saved))


@pytest.fixture
def skip_policy(monkeypatch):
    """train.on_nonfinite: skip, as the run config says it."""
    return "skip"


# ------------------------------------------------------------------------------------ divergence


def test_guard_policies():
    guard = NonFiniteGuard("skip")
    assert guard.check(1, 2.5, torch.tensor(1.0)) == "ok"
    assert guard.check(2, float("nan")) == "skip" and guard.check(3, 1.0, float("inf")) == "skip"
    assert guard.metrics() == {"nonfinite_steps": 2} and guard.state() == {"nonfinite_steps": 2, "loss_finite": False}
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.tensor([1.0, float("nan"), 0.0])
    assert guard.check(4, 1.0, None, [p]) == "skip"  # no clipping: the gradient itself is checked
    with pytest.raises(DivergedError, match="the loss is inf at step 7"):
        NonFiniteGuard("stop").check(7, float("inf"))
    with pytest.raises(DivergedError, match="weights are not finite after step 3"):
        NonFiniteGuard("skip").check_weights(3, torch.nn.Linear(2, 2).requires_grad_(False).apply(_nan_fill))
    with pytest.raises(ValueError, match="on_nonfinite"):
        NonFiniteGuard("ignore")


def _nan_fill(m):
    if isinstance(m, torch.nn.Linear):
        m.weight.fill_(float("nan"))


def test_diverged_run_stops_with_one_line_and_keeps_the_last_finite_checkpoint(
    tiny_data, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    diverging_run(tiny_data, run, "stop")
    code, err = cli_error(monkeypatch, capsys, "train", "--resume", "--out", run)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "training diverged" in err and "at step" in err and "step_00000004" in err
    # no checkpoint after the divergence; the last finite one survived pruning (keep_checkpoints: 1)
    assert [d.name for d in checkpoint_dirs(run)] == ["step_00000004"]
    weights = load_file(latest_checkpoint(run) / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    last = strict_lines(run / "metrics.jsonl")[-1]
    assert last["event"] == "diverged" and "step_00000004" in last["reason"]


def test_skip_policy_counts_steps_keeps_a_finite_checkpoint_and_logs_strict_json(
    tiny_data, tmp_path, skip_policy, monkeypatch
):
    run = tmp_path / "run"
    diverging_run(tiny_data, run, skip_policy)
    result = train(load_config(run / "config.yaml"), run, resume=True, progress=False)
    assert result.steps == 10
    lines = strict_lines(run / "metrics.jsonl")  # NaN / Infinity are written as null
    skipped = [x for x in lines if x.get("nonfinite_steps")]
    assert skipped and any(x["loss"] is None for x in skipped)
    assert lines[-1]["nonfinite_steps"] >= 1
    # Later checkpoints are marked, and the last finite one (step 4) is kept despite keep_checkpoints: 1.
    names = [d.name for d in checkpoint_dirs(run)]
    assert names[0] == "step_00000004" and names[-1] == "step_00000010"
    last_state = json.loads((run / "checkpoints" / "step_00000010" / "state.json").read_text())
    assert last_state["loss_finite"] is False and last_state["nonfinite_steps"] >= 1
    for d in checkpoint_dirs(run):
        assert all(torch.isfinite(w).all() for w in load_file(d / "model.safetensors").values())


def test_metrics_jsonl_is_strict_json(tmp_path):
    from mmtlab.train.logging import MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False)
    log.log(1, loss=float("nan"), grad_norm=float("inf"), parts=[1.0, float("-inf")], lr=0.1)
    log.close()
    (line,) = strict_lines(tmp_path / "metrics.jsonl")
    assert line["loss"] is None and line["grad_norm"] is None and line["parts"] == [1.0, None] and line["lr"] == 0.1


# -------------------------------------------------------------------------------------- pruning


def test_a_kill_during_pruning_leaves_no_half_deleted_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 4)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, None, {"samples": step})
    real_rmtree = ckpt_mod.shutil.rmtree

    def killed_halfway(path, *a, **k):  # deletes one file of a pruned checkpoint, then the process "dies"
        if "step_00000001" not in str(path):
            return real_rmtree(path, *a, **k)
        (path / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 3, model, None, {"samples": 3}, keep=2)  # prunes step 1
    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", real_rmtree)
    # every step_N left is complete; the half-deleted one is out of the step_N namespace
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_00000002", "step_00000003"]
    assert all((d / "model.safetensors").exists() for d in checkpoint_dirs(tmp_path))
    assert latest_checkpoint(tmp_path).name == "step_00000003"
    assert len(list((tmp_path / "checkpoints").glob(".deleting_*"))) == 1
    assert remove_partial_checkpoints(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]


# --------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=400, batch_size=8, checkpoint_every=100)))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mmtlab.cli", "train", str(config), "--out", str(run)]
    env = {**os.environ, "COLUMNS": "1000"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + 600
    while not (metrics.exists() and '"step": 2' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "--resume --out" in out + err
    stopped = json.loads(metrics.read_text().splitlines()[-1])
    assert stopped["event"] == "stopped" and stopped["reason"] == "SIGINT"
    assert latest_checkpoint(run).name == f"step_{stopped['step']:08d}" and stopped["step"] < 400


def test_sigint_handler_is_restored_and_a_second_ctrl_c_interrupts(monkeypatch):
    from mmtlab.train.signals import StopOnSignal

    before = signal.getsignal(signal.SIGINT)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.interrupted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


# ---------------------------------------------------------------------------------- permissions


def test_files_honour_the_umask(tiny_data, tmp_path):
    from mmtlab.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
        os.umask(0o002)
        run = tmp_path / "run"
        train(load_config(tiny_run_config(tiny_data, steps=1, threads=1)), run, progress=False)
    finally:
        os.umask(old)
    ckpt = latest_checkpoint(run)
    for f in (run / "config.yaml", run / "tokenizer.json", ckpt / "state.json", ckpt / "model.safetensors"):
        assert f.stat().st_mode & 0o777 == 0o664, f
    assert ckpt.stat().st_mode & 0o777 == 0o775


def test_emoji_scenes_build_directory_honours_the_umask(tmp_path):
    from mmtlab.data.emoji_scenes import build_emoji_scenes

    old = os.umask(0o022)
    try:
        build_emoji_scenes(tmp_path / "d", size=16, eval_size=4, heldout_size=2, progress=False, workers=1)
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "d" / "meta.json").stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------------------------------ lock


def test_a_second_launch_into_one_run_dir_fails_at_once(tiny_data, tmp_path, monkeypatch, capsys):
    from mmtlab.train.lock import RunDirLock

    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=1, threads=1)))
    with RunDirLock(run, RunDirError):  # the first launch, still training
        assert (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunDirError, match="in use by another mmtlab process"):
            train(load_config(config), run, progress=False)
        code, err = cli_error(monkeypatch, capsys, "train", config, "--out", run)
        assert code == 2 and len(err.splitlines()) == 1 and f"PID {os.getpid()}" in err, err
        assert not (run / "metrics.jsonl").exists()
    assert not (run / ".lock").exists()  # released at exit
    # A lock file left by a killed run (a dead PID, no flock held) is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert train(load_config(config), run, progress=False).steps == 1
    assert not (run / ".lock").exists()


def test_an_error_inside_the_lock_leaves_no_new_run_dir(tmp_path):
    from mmtlab.train.lock import run_dir_lock

    run = tmp_path / "new" / "run"
    with pytest.raises(ValueError), run_dir_lock(run, None, RunDirError):
        assert (run / ".lock").exists()
        raise ValueError("checked inside")
    assert not (tmp_path / "new").exists()  # e.g. a config error found by the loop: nothing written


# ------------------------------------------------------------------------------- damaged shards


@pytest.fixture(scope="module")
def half_bad_shards(tiny_data, tmp_path_factory):
    """64 samples alternating missing caption / good, in 2 shards; then a truncated third shard."""
    from mmtlab.data.formats.webdataset import ShardReader, write_shards

    good = list(ShardReader(sorted((tiny_data / "shards").glob("pretrain-*.tar")), decode=False))[:96]
    members = []
    for i, s in enumerate(good[:64]):
        members.append((f"{i:04d}", {"png": s["image"], "txt": "" if i % 2 == 0 else s["captions"][0]}))
    out = tmp_path_factory.mktemp("halfbad")
    shards = write_shards(out, "bad", members, shard_size=32)
    cut_members = [(f"c{i:04d}", {"png": s["image"], "txt": "a cut shard"}) for i, s in enumerate(good[64:])]
    (cut,) = write_shards(out, "cut", cut_members, shard_size=32)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    return shards, cut


def test_skipped_images_count_consumed_samples_not_read_ahead(half_bad_shards):
    from mmtlab.data.stream import ShardStream
    from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece

    shards, _ = half_bad_shards
    stream = ShardStream(shards, 64, buffer=24)  # reads 24 good (and 24 bad) samples ahead of the first batch
    tok = TextTokenizer(train_wordpiece(stream.captions(), 100), 16)
    batch = next(iter(stream.batches(tok, 4)))
    # each consumed sample hands on the one skipped sample before it: 4, not the ~28 read so far
    assert batch.skipped == 4


def test_damaged_shards_are_logged_in_metrics(half_bad_shards, tmp_path):
    shards, cut = half_bad_shards
    raw = tiny_run_config(shards[0].parent, steps=10, batch_size=8, checkpoint_every=10, threads=1)
    raw["data"] = {"format": "webdataset", "shards": "::".join(map(str, [*shards, cut])), "shuffle_buffer": 0}
    train(load_config(raw), tmp_path / "run", progress=False)
    lines = [x for x in strict_lines(tmp_path / "run" / "metrics.jsonl") if "loss" in x]
    assert all("damaged_shards" in x for x in lines)
    assert lines[-1]["damaged_shards"] >= 1 and lines[-1]["skipped_images"] >= 1
