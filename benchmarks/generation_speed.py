"""Caption decoding speed with and without the KV cache: tokens/s of greedy (and beam) decoding of
a fixed number of tokens per image, both measured in this process, so their ratio holds on a
noisy machine.

    python benchmarks/generation_speed.py                          # mammut-tiny, 32 tokens, batch 32
    python benchmarks/generation_speed.py --model coca-tiny --batch-size 8 --tokens 32 --beams 3

Without the cache every step recomputes the whole prefix (and the image's cross-attention keys
and values); with it a step runs only the new token and reuses both. End of sequence is ignored
so every row decodes exactly --tokens tokens (an untrained model would stop at random points).
The model is untrained (random weights): speed does not depend on what is generated. Writes
JSON to stdout and benchmarks/results/generation_speed.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import cpu_name, write_result  # benchmarks/common.py

from mmtlab.config import load_config
from mmtlab.models import build_model
from mmtlab.models.generate import generate


def decode_seconds(model, images, tokens: int, method: str, beams: int, repeats: int) -> dict[bool, float]:
    """Best-of-`repeats` seconds to decode `tokens` tokens per image, with (True) and without
    (False) the cache; the two are interleaved so load changes on a shared machine hit both."""
    context = model.caption_context(model.image_tokens(images))  # image encoding is not timed
    prompt = torch.full((images.shape[0], 1), model.cfg.text.cls_id, dtype=torch.long)
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for use_cache in (True, False):
            t = time.perf_counter()
            out = generate(
                model.decode,
                context,
                prompt,
                max_new_tokens=tokens,
                eos_id=None,
                method=method,
                num_beams=beams,
                use_cache=use_cache,
            )
            best[use_cache] = min(best[use_cache], time.perf_counter() - t)
            assert out.shape[1] == tokens + 1
    return best


@torch.no_grad()
def measure(model_name: str, batch_size: int, tokens: int, beams: int, repeats: int) -> list[dict]:
    cfg = load_config(
        {"model": model_name, "objectives": {"contrastive": 1.0, "caption": 1.0}},
        ["model.text.vocab_size=4096", f"model.text.max_len={tokens + 1}"],
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    images = torch.randn(batch_size, 3, cfg.model.image.size, cfg.model.image.size)
    rows = []
    for method, k in [("greedy", 1), ("beam", beams)]:
        timing = decode_seconds(model, images, tokens, method, k, repeats)
        rows.append(
            {
                "model": model_name,
                "params_M": round(model.num_params() / 1e6, 3),
                "method": method if method == "greedy" else f"beam{k}",
                "batch_size": batch_size,
                "tokens_per_caption": tokens,
                "tokens_per_s_cache": round(batch_size * tokens / timing[True], 1),
                "tokens_per_s_no_cache": round(batch_size * tokens / timing[False], 1),
                "speedup": round(timing[False] / timing[True], 2),
            }
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model config name(s) (default: mammut-tiny)")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded together")
    p.add_argument("--tokens", type=int, default=32, help="caption length in tokens")
    p.add_argument("--beams", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="best of N interleaved timings")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [
        r
        for m in (args.model or ["mammut-tiny"])
        for r in measure(m, args.batch_size, args.tokens, args.beams, args.repeats)
    ]
    result = {
        "benchmark": "generation_speed",
        "threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "results": rows,
    }
    write_result("generation_speed", result)


if __name__ == "__main__":
    main()
