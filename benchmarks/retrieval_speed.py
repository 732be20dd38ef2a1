"""Cross-encoder retrieval speed on the emoji-scenes test split (1,000 images x 5,000 captions):

  naive       one joint forward per (image, caption) pair, batch of one
  per-caption one uncached joint forward per caption over batches of 500 images (VOLTA's loop)
  exhaustive  mmtlab's `--mode cross`: pair-independent parts computed once, pairs batched
  rerank@k    mmtlab's `--mode rerank`: the model's contrastive head shortlists k per query,
              the cross-encoder rescores only those pairs

    nice -n 10 python benchmarks/retrieval_speed.py [--run RUN_DIR] [--k 128] [--naive-pairs 2000]

Without --run it trains the benchmark model once (configs/runs/retrieval-bench.yaml: a merged
single-stream region model with contrastive + ITM + MLM heads) into benchmarks/results/ and reuses
it afterwards. The naive loop over all 5M pairs would take hours, so it is timed on a random sample
of pairs and its rate extrapolated (the JSON says so); its scores on the sample are checked against
the exhaustive ones. Everything else runs in full. Times are measured in one process, so the
ratios hold on a busy machine even when the absolute numbers do not. Writes JSON to stdout and
benchmarks/results/retrieval_speed.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, cpu_name, write_result  # benchmarks/common.py

import mmtlab
from mmtlab.config import CONFIG_DIR, load_config
from mmtlab.data.loader import image_source
from mmtlab.data.sources import load_split
from mmtlab.eval.cross import PAIR_CHUNK, encode_unpaired_records, exhaustive_scores, rerank_scores
from mmtlab.eval.retrieval import embed_records, recall_at_k
from mmtlab.rundir import checkpoint_step, latest_checkpoint
from mmtlab.train.loop import train


def trained_run(run: Path | None, data: str) -> Path:
    if run is not None:
        return run
    run = RESULTS_DIR / "retrieval_speed_run"
    cfg = load_config(CONFIG_DIR / "runs" / "retrieval-bench.yaml", [f"data.root={data}"])
    ckpt = latest_checkpoint(run)
    if ckpt is None or checkpoint_step(ckpt) < cfg.train.steps:
        train(cfg, run, resume=ckpt is not None)
    return run


def recall(scores: torch.Tensor, t2i: torch.Tensor) -> dict:
    return {k: round(v, 2) for k, v in recall_at_k(scores, t2i, (1, 5, 10)).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a trained cross-encoder run with a contrastive head")
    ap.add_argument("--data", default="data/emoji-scenes", help="dataset root (its test split is used)")
    ap.add_argument("--images", type=int, default=1000, help="test images (5 captions each)")
    ap.add_argument("--k", type=int, default=128, help="rerank shortlist size")
    ap.add_argument("--naive-pairs", type=int, default=2000, help="pairs timed in the naive per-pair loop")
    ap.add_argument("--volta-captions", type=int, default=20, help="captions timed in the per-caption batched loop")
    ap.add_argument("--chunk", type=int, default=PAIR_CHUNK, help="pairs per batched forward")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = trained_run(args.run, args.data)  # training needs autograd; everything after does not
    with torch.no_grad():
        benchmark(args, run)


def benchmark(args: argparse.Namespace, run: Path) -> None:
    model = mmtlab.load(run)
    cfg = model.run_config
    cfg.data.root, cfg.data.annotations, cfg.data.images = args.data, None, None
    records = load_split(cfg.data, "test")[: args.images]
    source = image_source(cfg, records, progress=False)
    tok = model.tokenizer

    # Exhaustive, cached and batched: everything from the records to the score matrix.
    t0 = time.perf_counter()
    un = encode_unpaired_records(model, tok, records, source=source, progress=False)
    t_cache = time.perf_counter() - t0
    exhaustive = exhaustive_scores(model, un, chunk=args.chunk, progress=True)
    t_exhaustive = time.perf_counter() - t0
    n_pairs = exhaustive.numel()

    # Rerank@k: dual embeddings of the model's own contrastive head, then the shortlist.
    t0 = time.perf_counter()
    emb = embed_records(model, tok, records, progress=False, source=source)
    un_r = encode_unpaired_records(model, tok, records, source=source, progress=False)
    rr = rerank_scores(model, un_r, emb.images @ emb.texts.T, args.k, chunk=args.chunk, progress=True)
    t_rerank = time.perf_counter() - t0
    r_ex = recall(exhaustive, un.text_to_image)
    r_t2i, r_i2t = recall(rr.t2i, un.text_to_image), recall(rr.i2t, un.text_to_image)
    r_rerank = {**{k: v for k, v in r_i2t.items() if k.startswith("i2t")},
                **{k: v for k, v in r_t2i.items() if k.startswith("t2i")}}  # fmt: skip

    # Naive: one pair per forward, every part recomputed, on a random sample of pairs.
    g = torch.Generator().manual_seed(0)
    sample = torch.randint(n_pairs, (args.naive_pairs,), generator=g)
    captions = [c for ri in un.record_index for c in records[ri].captions if c and c.strip()]
    naive_scores = torch.empty(len(sample))
    t0 = time.perf_counter()
    for n, p in enumerate(sample.tolist()):
        i, j = divmod(p, un.n_texts)
        tokens, mask = tok([captions[j]])
        naive_scores[n] = model.score(source.stack([source.get(un.record_index[i])]), tokens, mask)[0]
    t_naive_sample = time.perf_counter() - t0
    naive_rate = len(sample) / t_naive_sample
    t_naive = n_pairs / naive_rate
    max_diff = (naive_scores - exhaustive.flatten()[sample]).abs().max().item()

    # VOLTA-style: per caption, one uncached joint forward over a batch of images (500 at a time).
    images = source.stack([source.get(ri) for ri in un.record_index])
    caps = torch.randperm(un.n_texts, generator=g)[: args.volta_captions].tolist()
    t0 = time.perf_counter()
    for j in caps:
        tokens, mask = tok([captions[j]])
        for s in range(0, un.n_images, 500):
            idx = torch.arange(s, min(s + 500, un.n_images))
            model.score(images[idx], tokens.expand(len(idx), -1), mask.expand(len(idx), -1))
    t_volta = (time.perf_counter() - t0) * un.n_texts / len(caps)

    result = {
        "benchmark": "retrieval_speed",
        "run": str(run),
        "model": {
            "layout": cfg.model.layout,
            "width": cfg.model.width,
            "depth": cfg.model.depth,
            "image_input": cfg.model.image.input,
            "params": model.num_params(),
            "unimodal_prefix_layers": model.unimodal_layers,
        },  # fmt: skip
        "n_images": un.n_images,
        "n_texts": un.n_texts,
        "pairs": n_pairs,
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "naive": {
            "measured_pairs": len(sample),
            "seconds_measured": round(t_naive_sample, 2),
            "pairs_per_s": round(naive_rate, 1),
            "seconds_extrapolated": round(t_naive, 1),
            "max_abs_diff_vs_exhaustive": max_diff,
        },  # fmt: skip
        "per_caption_batched_uncached": {"measured_captions": len(caps), "seconds_extrapolated": round(t_volta, 1)},
        "exhaustive": {
            "seconds": round(t_exhaustive, 2),
            "of_which_pair_independent_s": round(t_cache, 2),
            "pairs_per_s": round(n_pairs / t_exhaustive, 1),
            "recall": r_ex,
        },  # fmt: skip
        "rerank": {
            "k": args.k,
            "seconds": round(t_rerank, 2),
            "pairs_scored": rr.n_pairs,
            "shortlist_ceiling": rr.ceiling,
            "recall": r_rerank,
        },  # fmt: skip
        "speedup_exhaustive_vs_naive": round(t_naive / t_exhaustive, 1),
        "speedup_exhaustive_vs_per_caption_batched": round(t_volta / t_exhaustive, 2),
        "speedup_rerank_vs_exhaustive": round(t_exhaustive / t_rerank, 2),
        "pair_reduction_rerank": round(n_pairs / rr.n_pairs, 2),
        "r1_difference_rerank_minus_exhaustive": {
            "t2i": round(r_rerank["t2i_r1"] - r_ex["t2i_r1"], 2),
            "i2t": round(r_rerank["i2t_r1"] - r_ex["i2t_r1"], 2),
        },
        "targets": {"exhaustive_vs_naive": ">= 10x", "rerank_vs_exhaustive": ">= 20x", "r1_within": 0.5},
    }
    result["targets_met"] = {
        "exhaustive_vs_naive": result["speedup_exhaustive_vs_naive"] >= 10,
        "rerank_vs_exhaustive": result["speedup_rerank_vs_exhaustive"] >= 20,
        "r1_within_0.5": all(abs(v) <= 0.5 for v in result["r1_difference_rerank_minus_exhaustive"].values()),
    }
    write_result("retrieval_speed", result)


if __name__ == "__main__":
    main()
