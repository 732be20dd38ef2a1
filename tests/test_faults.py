"""Runs that survive faults: SIGKILL at a random step, SIGTERM, a full disk."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import tiny_run_config
from safetensors import SafetensorError
from safetensors.torch import load_file

from mmtlab.config import load_config
from mmtlab.rundir import checkpoint_step
from mmtlab.train.checkpoint import CheckpointError, checkpoint_dirs, latest_checkpoint, load_checkpoint
from mmtlab.train.loop import train

STEPS = 12


def fault_config(data, **train_overrides):
    train = {"steps": STEPS, "batch_size": 8, "checkpoint_every": 3, "threads": 2, **train_overrides}
    raw = tiny_run_config(data, **train)
    raw["model"]["dropout"] = 0.1  # dropout must replay across the restart too
    return raw


def start_cli(config_path, run_dir, *extra):
    cmd = [sys.executable, "-m", "mmtlab.cli", "train", str(config_path), "--out", str(run_dir), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(proc, run_dir, step, timeout=600):
    """Poll metrics.jsonl until a line logs `step` (or later)."""
    path, deadline = run_dir / "metrics.jsonl", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended before step {step}: {proc.stderr.read()[-2000:]}")
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) >= step:
                        return
                except json.JSONDecodeError:
                    pass
        time.sleep(0.002)
    raise AssertionError(f"no step {step} after {timeout} s")


def final_tensors(run_dir):
    ckpt = latest_checkpoint(run_dir)
    return load_file(ckpt / "model.safetensors"), load_file(ckpt / "optimizer.safetensors")


def assert_bitwise_equal(a, b):
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(fault_config(tiny_data)))
    train(load_config(config), root / "whole", progress=False)
    return config, final_tensors(root / "whole")


def test_sigkill_at_a_random_step_then_resume_gives_bitwise_the_same_weights(uninterrupted, tmp_path):
    config, expected = uninterrupted
    kill_at = random.SystemRandom().randrange(4, STEPS - 2)  # after the first checkpoint (step 3)
    run = tmp_path / "killed"
    proc = start_cli(config, run)
    wait_for_step(proc, run, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"killed at step {kill_at}"
    last = latest_checkpoint(run)
    assert checkpoint_step(last) < STEPS, f"killed at step {kill_at}"
    train(load_config(run / "config.yaml"), run, resume=True, progress=False)  # `mmtlab train --resume --out RUN`
    assert_bitwise_equal(final_tensors(run), expected)
    assert not list((run / "checkpoints").glob(".tmp*"))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == list(range(1, STEPS + 1)), f"killed at step {kill_at}"


def test_sigterm_saves_a_checkpoint_and_exits(uninterrupted, tmp_path):
    config, expected = uninterrupted
    run = tmp_path / "terminated"
    proc = start_cli(config, run)
    wait_for_step(proc, run, 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)  # a hang guard, not a timing assumption
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    stopped = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert stopped["event"] == "stopped"
    assert latest_checkpoint(run).name == f"step_{stopped['step']:08d}"  # the step it stopped at, not an older one
    assert stopped["step"] < STEPS
    train(load_config(run / "config.yaml"), run, resume=True, progress=False)
    assert_bitwise_equal(final_tensors(run), expected)


def test_full_disk_gives_a_clear_error_and_keeps_the_last_checkpoint(tiny_data, tmp_path, monkeypatch):
    import mmtlab.train.checkpoint as checkpoint

    real_save, calls = checkpoint.save_file, []

    def save_until_full(tensors, path, *a, **kw):
        calls.append(path)
        if len(calls) > 2:  # the second checkpoint's first file: what safetensors raises on a full disk
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(checkpoint, "save_file", save_until_full)
    cfg = load_config(fault_config(tiny_data, steps=4, checkpoint_every=2))
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        train(cfg, tmp_path / "run", progress=False)
    assert "step_00000002" in str(err.value) and "--resume" in str(err.value)
    assert [d.name for d in checkpoint_dirs(tmp_path / "run")] == ["step_00000002"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))
    from mmtlab.models import build_model

    meta = load_checkpoint(
        latest_checkpoint(tmp_path / "run"), build_model(load_config(tmp_path / "run" / "config.yaml")), None
    )
    assert meta["step"] == 2


def test_full_disk_on_a_real_tmpfs(tiny_data, tmp_path):
    """The same on a 4 MiB tmpfs, which a few checkpoints fill for real (needs root to mount)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cfg = load_config(fault_config(tiny_data, steps=12, checkpoint_every=1, keep_checkpoints=20))
        with pytest.raises(CheckpointError, match="No space left on device"):
            train(cfg, mount / "run", progress=False)
        dirs = checkpoint_dirs(mount / "run")
        assert dirs and not list((mount / "run" / "checkpoints").glob(".tmp*"))
        from mmtlab.models import build_model

        model = build_model(load_config(mount / "run" / "config.yaml"))
        assert load_checkpoint(dirs[-1], model, None)["step"] == len(dirs)  # every one kept is complete
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path):
    from mmtlab.train.logging import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')
    log = MetricsLog(tmp_path, resume_step=2, tensorboard=False)
    log.log(3, loss=1.8)
    log.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_stale_temporary_checkpoints_are_removed_on_resume(tiny_data, tmp_path):
    cfg = load_config(fault_config(tiny_data, steps=2))
    train(cfg, tmp_path / "run", stop_after=1, progress=False)
    stale = tmp_path / "run" / "checkpoints" / f".tmp_step_00000002_{os.getpid() + 1}"
    stale.mkdir()
    train(cfg, tmp_path / "run", resume=True, progress=False)
    assert not stale.exists()
