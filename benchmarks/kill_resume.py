"""Kill and resume, through the CLI as a user would: `mmtlab train` a run config uninterrupted; train
it again, SIGKILL the process at a random step, `mmtlab train --resume` it; compare the two runs'
final weights and optimizer state bitwise.

    python benchmarks/kill_resume.py                             # the demo config, shortened (below)
    python benchmarks/kill_resume.py --config configs/runs/merged-mlm.yaml --set train.steps=40

Writes JSON to stdout and benchmarks/results/kill_resume.json. Not a timing benchmark: it checks
that a killed run loses nothing but the steps since its last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import write_result  # benchmarks/common.py
from safetensors.torch import load_file

from mmtlab.config import CONFIG_DIR
from mmtlab.rundir import latest_checkpoint, latest_step

SHORT = [
    "train.steps=30",
    "train.batch_size=32",
    "train.checkpoint_every=5",
    "train.warmup_steps=5",
    "train.log_every=1",
    "train.eval_every=null",
    "train.threads=1",  # one thread per process: 2 threads on a busy 2-core machine spin-wait each other
    "model.dropout=0.1",  # dropout's random stream must replay across the restart too
]


def cli(config: str, run: Path, sets: list[str], *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmtlab.cli", "train", config, "--out", str(run), *extra]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_step(run: Path) -> int:
    path, step = run / "metrics.jsonl", 0
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line being written
                step = max(step, json.loads(line).get("step", 0))
    return step


def final_state(run: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run)
    state = {f"model.{k}": v for k, v in load_file(ckpt / "model.safetensors").items()}
    return state | {f"optim.{k}": v for k, v in load_file(ckpt / "optimizer.safetensors").items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG_DIR / "runs" / "demo.yaml"))
    p.add_argument("--set", action="append", default=[], help="config override (after the shortening ones)")
    p.add_argument("--out", default=None, help="where the two runs go (default: a temporary folder)")
    args = p.parse_args()
    sets = SHORT + args.set
    root = Path(args.out or tempfile.mkdtemp(prefix="kill_resume_"))
    steps = int(next(s for s in reversed(sets) if s.startswith("train.steps=")).split("=")[1])
    every = int(next(s for s in reversed(sets) if s.startswith("train.checkpoint_every=")).split("=")[1])

    whole = cli(args.config, root / "whole", sets)
    if whole.wait():
        sys.exit(f"uninterrupted run failed:\n{whole.stderr.read()[-3000:]}")

    kill_at = random.SystemRandom().randrange(every + 1, steps - 1)
    killed = cli(args.config, root / "killed", sets)
    while logged_step(root / "killed") < kill_at:
        if killed.poll() is not None:
            sys.exit(f"the run ended before step {kill_at}: {killed.stderr.read()[-3000:]}")
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    killed_at = logged_step(root / "killed")
    resumed_from = latest_step(root / "killed")
    resumed = cli(args.config, root / "killed", [], "--resume")  # the run's own config.yaml
    if resumed.wait():
        sys.exit(f"resume failed:\n{resumed.stderr.read()[-3000:]}")

    a, b = final_state(root / "whole"), final_state(root / "killed")
    differing = sorted(k for k in a if k not in b or not torch.equal(a[k], b[k]))
    result = {
        "benchmark": "kill_resume",
        "config": args.config,
        "overrides": sets,
        "steps": steps,
        "killed_by": "SIGKILL",
        "kill_returncode": killed.returncode,
        "last_logged_step_before_kill": killed_at,
        "resumed_from_checkpoint_step": resumed_from,
        "tensors_compared": len(a),
        "tensors_differing": differing,
        "bitwise_equal": a.keys() == b.keys() and not differing,
        "runs": str(root),
    }
    write_result("kill_resume", result)


if __name__ == "__main__":
    main()
