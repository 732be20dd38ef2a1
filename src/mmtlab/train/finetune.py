"""Fine-tuning a trained run on a downstream task into a subdirectory of it: VQA (the MaMMUT recipe:
pretrain, then fine-tune the generative pass on answers)."""

from __future__ import annotations

import json
from pathlib import Path

from mmtlab.config import load_config
from mmtlab.rundir import checkpoint_step, latest_checkpoint
from mmtlab.train.loop import train


def finetune_vqa(
    run_dir: Path, steps: int, *, lr: float | None = None, batch_size: int | None = None, progress: bool = True
) -> Path:
    """Fine-tune a decoder run on VQA (answer-only caption loss) into RUN_DIR/vqa, initialised from
    the run's weights and tokenizer. Resumable; a finished fine-tune is reused."""
    run_dir = Path(run_dir)
    out = run_dir / "vqa"
    overrides = [
        "objectives=" + json.dumps({"caption": 1.0}),
        "data.task=vqa",
        f"train.steps={steps}",
        f"train.init_from={json.dumps(str(run_dir))}",
        "train.eval_every=null",
        f"train.checkpoint_every={steps}",
        f"train.warmup_steps={max(1, steps // 10)}",
    ]
    if lr is not None:
        overrides.append(f"train.lr={lr}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    cfg = load_config(run_dir / "config.yaml", overrides)
    ckpt = latest_checkpoint(out)
    if ckpt is None or checkpoint_step(ckpt) < steps:
        train(cfg, out, resume=ckpt is not None, progress=progress)
    return out
