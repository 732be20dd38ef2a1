"""Speed of the cross-modal input ablation (`mmtlab ablate`) on N grounded test phrases.

    nice -n 10 python benchmarks/ablation_speed.py --run RUN_DIR [--phrases 1000] [--threads 1]

RUN_DIR: a region model with MLM and MRM heads (e.g. a Hendricks-study run trained with mrm_kl).
Times, in one process: loading (model, region cache, Flickr30k Entities files), the diagnostic
itself (3 vision-for-language + 3 language-for-vision forwards per phrase, bootstrap CIs), and as
the reference one plain joint forward over the same phrases (masked phrase, intact image). The
ratio diagnostic / reference says what the diagnostic costs beyond its six forward passes (an ideal
implementation is ~6x); it holds on a busy machine even when the absolute numbers do not. Writes
JSON to stdout and benchmarks/results/ablation_speed.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import cpu_name, write_result  # benchmarks/common.py

from mmtlab.data.formats.flickr30k_entities import EXPORT_DIR, load_entities
from mmtlab.data.loader import image_source
from mmtlab.data.sources import load_split
from mmtlab.diagnostics import ablation as ab
from mmtlab.diagnostics.runs import entities_root
from mmtlab.eval.runs import load_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--phrases", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", type=Path, default=None, help="dataset root (default: the run's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, cfg = load_run(args.run, args.data)
    records = load_split(cfg.data, "test")
    source = image_source(cfg, records, progress=False)
    with entities_root(None, Path(cfg.data.root) / EXPORT_DIR, records) as root:  # as `mmtlab ablate` does
        found = load_entities(root, [Path(r.path).stem for r in records])
    phrases = ab.subsample(ab.grounded_phrases(records, found)[0], args.phrases, seed=0)
    inputs = ab.VisualInputs(model, source, records, "iot", 0.5)
    load_s = time.perf_counter() - t0
    bs = cfg.eval.batch_size

    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(phrases), bs):
            chunk = phrases[s : s + bs]
            tokens, mask, inside = model.tokenizer.with_spans(
                [q.caption for q in chunk], [(q.start, q.end) for q in chunk]
            )
            images, _ = inputs.batch(chunk)
            model(images=images, tokens=tokens.masked_fill(inside, model.cfg.text.mask_id), text_mask=mask)
    reference_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = ab.run_ablation(model, model.tokenizer, phrases, inputs, batch_size=bs, progress=False)
    diagnostic_s = time.perf_counter() - t0

    write_result(
        "ablation_speed",
        {
            "run": str(args.run),
            "cpu": cpu_name(),
            "threads": args.threads,
            "phrases": len(phrases),
            "heads": [h for h in ("mlm", "mrm") if getattr(model, h) is not None],
            "load_seconds": round(load_s, 2),
            "diagnostic_seconds": round(diagnostic_s, 2),
            "phrases_per_second": round(len(phrases) / diagnostic_s, 1),
            "one_forward_seconds": round(reference_s, 3),
            "diagnostic_over_one_forward": round(diagnostic_s / reference_s, 2),
            "v4l_bits": {a: round(result["vision_for_language"][a]["bits"], 4) for a in ab.VISION_ABLATIONS},
        },
    )


if __name__ == "__main__":
    main()
