"""Is the data loader the bottleneck? Pairs/s of a run's training data pipelines against pairs/s of
its training step, measured in one process.

    python benchmarks/loader_vs_train.py                       # configs/runs/demo.yaml on data/emoji-scenes
    python benchmarks/loader_vs_train.py --config configs/runs/demo.yaml --workers 0,2 --batches 20

Pipelines: Karpathy JSON + PNG files (map-style, decoded on first use) and WebDataset shards
(streamed), each with 0 and N DataLoader workers, built by data/loader.py exactly as training
builds them. For each: loader pairs/s alone, its ratio to the training step's pairs/s on batches
already in memory (> 1: the loader keeps up), and end-to-end pairs/s of training steps that pull
from that loader. Workers load while the step computes, but on a machine with few cores they
also compete with it for the same cores. Writes benchmarks/results/loader_vs_train.json.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from common import write_result  # benchmarks/common.py

from mmtlab.config import CONFIG_DIR, load_config, resolve
from mmtlab.data.loader import training_batches, training_dataset
from mmtlab.data.stream import ShardStream, shard_urls
from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.train.optim import build_optimizer


def pairs_per_s(batches, n: int) -> float:
    next(batches)  # warm-up: worker start, first shard open
    t = time.perf_counter()
    pairs = sum(len(b) for b in itertools.islice(batches, n))
    return pairs / (time.perf_counter() - t)


def train_pairs_per_s(cfg, batches, n: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = build_objectives(cfg)
    opt = build_optimizer(model, cfg.train)
    gen = torch.Generator()

    def step(batch):
        loss, _ = objective(model, batch, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return len(batch)

    step(next(batches))
    t = time.perf_counter()
    pairs = sum(step(b) for b in itertools.islice(batches, n))
    return pairs / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(CONFIG_DIR / "runs" / "demo.yaml"))
    p.add_argument("--set", action="append", default=[], help="config override, e.g. train.batch_size=256")
    p.add_argument("--workers", default="0,2", help="DataLoader workers to try")
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args()
    base = load_config(args.config, args.set)
    captions = ShardStream(shard_urls(base.data), base.model.image.size).captions(5000)
    tok = TextTokenizer(train_wordpiece(captions, base.tokenizer.vocab_size), base.model.text.max_len)
    base = resolve(base, tokenizer=tok)
    rows = []
    in_memory = list(itertools.islice(training_batches(training_dataset(base), base, tok), args.batches + 1))
    train_rate = train_pairs_per_s(base, iter(in_memory), args.batches)
    for fmt, workers in itertools.product(("karpathy", "webdataset"), [int(w) for w in args.workers.split(",")]):
        pipeline = [f"data.format={fmt}", f"data.num_workers={workers}"]
        cfg = resolve(load_config(args.config, [*args.set, *pipeline]), tokenizer=tok)
        loader_rate = pairs_per_s(training_batches(training_dataset(cfg), cfg, tok), args.batches)
        end_to_end = train_pairs_per_s(cfg, training_batches(training_dataset(cfg), cfg, tok), args.batches)
        rows.append(
            {
                "format": fmt,
                "num_workers": workers,
                "loader_pairs_per_s": round(loader_rate, 1),
                "loader_over_train": round(loader_rate / train_rate, 2),
                "end_to_end_pairs_per_s": round(end_to_end, 1),
            }
        )
    result = {
        "benchmark": "loader_vs_train",
        "config": args.config,
        "overrides": args.set,
        "batch_size": base.train.batch_size,
        "threads": torch.get_num_threads(),
        "train_step_pairs_per_s": round(train_rate, 1),
        "results": rows,
    }
    write_result("loader_vs_train", result)


if __name__ == "__main__":
    main()
