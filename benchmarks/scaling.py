"""Data-parallel scaling: training pairs/s of one model config on 1 and on N processes, same global
batch (gloo on CPU). Three runs per mode: 1 process with all threads, 1 process with 1/N of them,
and N processes with 1/N each; the N-process speedup against the second is the data-parallel
efficiency (ideal: N), against the first the gain over using the same cores with threads.

    python benchmarks/scaling.py                                  # demo model, ddp and fsdp, 1 -> 2 processes
    python benchmarks/scaling.py --model merged-tiny --world 4 --threads 16 --batch-size 256

Each process runs the real training step of train/loop.py's data parallelism (parallelize(),
gradient sync or FSDP2, clipping, AdamW) on a synthetic batch of batch_size / N pairs, so the
figure is compute + communication, not data loading (see loader_vs_train.py). Writes JSON to
stdout and benchmarks/results/scaling.json. On a shared 2-core machine expect noise: compare the
processes' ratio within one run.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import write_result  # benchmarks/common.py

from mmtlab.config import TrainConfig


def _rank_throughput(model_spec: str, objectives: list[str], mode: str, batch_size: int, text_len: int, steps: int):
    import torch.distributed as dist
    from train_throughput import measure_config, synthetic_batch

    from mmtlab.models import build_model
    from mmtlab.objectives import build_objectives
    from mmtlab.train.distributed import parallelize, setup
    from mmtlab.train.optim import build_optimizer

    dp = setup()  # joins the group launch_local started
    cfg = measure_config(model_spec, objectives, "fp32")
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = build_objectives(cfg)
    par = parallelize(model, dp, TrainConfig(data_parallel=mode))
    opt = build_optimizer(model, cfg.train)
    batch = synthetic_batch(cfg, batch_size // dp.world, text_len, torch.Generator().manual_seed(dp.rank))

    def step():
        par.begin_micro_step(last=True)
        loss, _ = objective(model, batch, torch.Generator().manual_seed(1), dp)
        loss.backward()
        par.end_backward()
        par.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    dist.barrier()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    return time.perf_counter() - t


def run(model_spec, objectives, mode, world, per_rank, batch_size, text_len, steps) -> dict:
    from mmtlab.train.distributed import launch_local

    args = (model_spec, objectives, mode, batch_size, text_len, steps)
    seconds = max(launch_local(_rank_throughput, world, *args, threads=per_rank))
    return {
        "data_parallel": mode,
        "processes": world,
        "threads_per_process": per_rank,
        "global_batch": batch_size,
        "pairs_per_s": round(batch_size * steps / seconds, 1),
        "step_ms": round(1e3 * seconds / steps, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="model config (train_throughput.py syntax, e.g. demo:width=256)")
    p.add_argument("--objectives", default="contrastive")
    p.add_argument("--modes", default="ddp,fsdp")
    p.add_argument("--world", type=int, default=2, help="processes to scale to (from 1)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads shared by all processes")
    p.add_argument("--batch-size", type=int, default=128, help="global batch")
    p.add_argument("--text-len", type=int, default=24)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    objectives = args.objectives.split(",")
    rows = []
    per_rank = max(1, args.threads // args.world)
    for mode in args.modes.split(","):
        common = (args.batch_size, args.text_len, args.steps)
        all_threads = run(args.model, objectives, mode, 1, args.threads, *common)
        same_threads = run(args.model, objectives, mode, 1, per_rank, *common)
        many = run(args.model, objectives, mode, args.world, per_rank, *common)
        many["speedup_vs_1_process_same_threads_each"] = round(many["pairs_per_s"] / same_threads["pairs_per_s"], 3)
        many["speedup_vs_1_process_all_threads"] = round(many["pairs_per_s"] / all_threads["pairs_per_s"], 3)
        rows += [all_threads, same_threads, many]
    result = {
        "benchmark": "scaling",
        "model": args.model,
        "objectives": objectives,
        "threads": args.threads,
        "torch": torch.__version__,
        "backend": "gloo (CPU)",
        "results": rows,
    }
    write_result("scaling", result)


if __name__ == "__main__":
    main()
