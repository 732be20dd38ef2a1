"""Training throughput of a model config: pairs/s, achieved FLOP/s and MFU against a matmul peak
measured in the same process (so the ratio holds on a noisy machine).

    python benchmarks/train_throughput.py                       # the demo's model (configs/runs/demo.yaml)
    python benchmarks/train_throughput.py --model dual-tiny --model merged-tiny --objectives mlm
    python benchmarks/train_throughput.py --precision bf16 --batch-size 256
    python benchmarks/train_throughput.py --model demo --model demo:width=256,depth=8,heads=8   # two sizes
    python benchmarks/train_throughput.py --model demo --model mammut-tiny --model coca-tiny

A model is any model config (a name in configs/models/, a .yaml path, or "demo"), optionally
followed by `:key=value,...` overrides of its fields (values parsed as YAML), so new model
families are benchmarked by naming their config.
Objectives default to contrastive, and to contrastive + caption for decoder families (MaMMUT: its
two passes, with CPE crops as in training).

FLOPs per step come from torch.utils.flop_counter (forward + backward of the real objective);
peak is the best of a few large fp32 (or bf16) matmuls on the same threads. Writes JSON to stdout
and benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from common import cpu_name, write_result  # benchmarks/common.py
from torch.utils.flop_counter import FlopCounterMode

from mmtlab.config import CONFIG_DIR, load_config
from mmtlab.data.pairs import Batch
from mmtlab.families import family
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.train.optim import build_optimizer


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def synthetic_batch(cfg, batch_size: int, seq_len: int, g: torch.Generator) -> Batch:
    m = cfg.model
    tokens = torch.randint(5, m.text.vocab_size, (batch_size, seq_len), generator=g)
    tokens[:, 0], tokens[:, -1] = m.text.cls_id, m.text.sep_id
    images = torch.randn(batch_size, 3, m.image.size, m.image.size, generator=g)
    return Batch(images, tokens, torch.ones_like(tokens, dtype=torch.bool), torch.arange(batch_size))


def model_overrides(spec: str) -> tuple[str, list[str]]:
    """ "dual-tiny:width=256,depth=8" -> ("dual-tiny", ["model.width=256", "model.depth=8"])."""
    name, _, rest = spec.partition(":")
    return name, [f"model.{kv.strip()}" for kv in rest.split(",") if kv.strip()]


def measure_config(model_name: str, objectives: list[str] | None, precision: str):
    """A run config for `model_name`: a model config name or path, or "demo" for the model of
    configs/runs/demo.yaml, with optional `:key=value,...` overrides."""
    name, overrides = model_overrides(model_name)
    model = load_config(CONFIG_DIR / "runs" / "demo.yaml").model_dump()["model"] if name == "demo" else name
    if objectives is None:
        arch = load_config({"model": model}, overrides).model.arch
        objectives = ["contrastive", "caption"] if family(arch).passes == "decoder" else ["contrastive"]
    return load_config(
        {"model": model, "objectives": {o: 1.0 for o in objectives}},
        ["model.outputs=null", "model.text.vocab_size=4096", f"train.precision={precision}", *overrides],
    )


def measure(
    model_name: str, objectives: list[str] | None, batch_size: int, seq_len: int, steps: int, precision: str
) -> dict:
    cfg = measure_config(model_name, objectives, precision)
    torch.manual_seed(0)
    model = build_model(cfg)
    objective = build_objectives(cfg)
    opt = build_optimizer(model, cfg.train)
    g = torch.Generator().manual_seed(0)
    batch = synthetic_batch(cfg, batch_size, seq_len, g)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def step():
        with autocast:
            loss, _ = objective(model, batch, torch.Generator().manual_seed(1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        with autocast:
            loss, _ = objective(model, batch, torch.Generator().manual_seed(1))
        loss.backward()
    flops_per_step = fc.get_total_flops()
    opt.zero_grad(set_to_none=True)
    for _ in range(2):
        step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - t) / steps
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    achieved = flops_per_step / seconds
    return {
        "model": model_name,
        "objectives": list(cfg.objectives),
        "precision": precision,
        "params_M": round(model.num_params() / 1e6, 3),
        "batch_size": batch_size,
        "text_len": seq_len,
        "image_size": cfg.model.image.size,
        "pairs_per_s": round(batch_size / seconds, 1),
        "step_ms": round(seconds * 1e3, 1),
        "gflop_per_step": round(flops_per_step / 1e9, 2),
        "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_peak_gflops": round(peak / 1e9, 2),
        "mfu": round(achieved / peak, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model config name(s), or 'demo' (the default)")
    p.add_argument(
        "--objectives", default=None, help="comma-separated objectives (default: contrastive[,caption for decoders])"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--text-len", type=int, default=24, help="tokens per caption (emoji-scenes captions average ~15-25)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        measure(
            m,
            args.objectives.split(",") if args.objectives else None,
            args.batch_size,
            args.text_len,
            args.steps,
            args.precision,
        )
        for m in (args.model or ["demo"])
    ]
    result = {
        "benchmark": "train_throughput",
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "results": rows,
    }
    write_result("train_throughput", result)


if __name__ == "__main__":
    main()
