"""Evaluations of a run directory by name: what `mmtlab eval NAME` and a study's `evals:` call.

Each writes RUN_DIR/eval/<name>.json and returns its metrics. The runners live with their layer:
eval/runs.py (retrieval, mlm, caption, vqa, probe, fewshot, gates, zeroshot), diagnostics/runs.py (the cross-modal
ablation), eval/detect.py; VQA and detection may first fine-tune the run (train/finetune.py,
train/detect.py), which is why the registry sits
above all three. A family lists the names that apply to it (mmtlab/families.py: `evals`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from mmtlab.diagnostics.runs import eval_ablation
from mmtlab.eval import runs
from mmtlab.eval.detect import eval_detect as _eval_detect
from mmtlab.train.detect import finetune_detect
from mmtlab.train.finetune import finetune_vqa


def eval_vqa(
    run_dir: Path,
    split: str = "test",
    data: Path | None = None,
    finetune_steps: int | None = None,
    finetune_lr: float | None = None,
    max_questions: int | None = None,
    progress: bool = True,
) -> dict:
    """Generative VQA accuracy by question type. With `finetune_steps`, the run is first fine-tuned
    on VQA questions of its training split (into RUN_DIR/vqa), and that model is evaluated."""
    runs.at_least_one(finetune_steps=finetune_steps)
    tuned = None
    if finetune_steps:
        runs.require_eval(runs.load_run(Path(run_dir))[1], "vqa", Path(run_dir))  # before training, not after
        tuned = finetune_vqa(run_dir, finetune_steps, lr=finetune_lr, progress=progress)
    return runs.eval_vqa(run_dir, split, data, max_questions, progress, model_dir=tuned, finetune_steps=finetune_steps)


def eval_detect(
    run_dir: Path,
    split: str = "detect_test",
    data: Path | None = None,
    finetune_steps: int | None = None,
    finetune_lr: float | None = None,
    max_images: int | None = None,
    progress: bool = True,
    **finetune,
) -> dict:
    """Open-vocabulary detection AP (base / novel / held-out). RUN_DIR is a detector directory, or a
    pretrained run whose detector is RUN_DIR/detect; with `finetune_steps` the run is first
    fine-tuned into RUN_DIR/detect on the base categories (train/detect.py; `finetune`: its other
    settings, e.g. batch_size, seed, threads)."""
    runs.at_least_one(finetune_steps=finetune_steps, max_images=max_images)
    tuned = None
    if finetune_steps:
        runs.require_eval(runs.load_run(Path(run_dir))[1], "detect", Path(run_dir))
        kw = {"lr": finetune_lr} if finetune_lr is not None else {}
        tuned = finetune_detect(run_dir, steps=finetune_steps, data=data, progress=progress, **kw, **finetune)
    return _eval_detect(run_dir, split, data, max_images=max_images, progress=progress, model_dir=tuned,
                        finetune_steps=finetune_steps)  # fmt: skip


# The blind control as an evaluation of its own, so a study can report both: every tanh gate
# closed, the frozen LM with the trained <image> embedding (-> eval/fewshot_blind.json).
eval_fewshot_blind = partial(runs.eval_fewshot, blind=True)

EVALS: dict[str, Callable[..., dict]] = {
    "retrieval": runs.eval_retrieval,
    "mlm": runs.eval_mlm,
    "caption": runs.eval_caption,
    "vqa": eval_vqa,
    "probe": runs.eval_probe,
    "fewshot": runs.eval_fewshot,
    "fewshot_blind": eval_fewshot_blind,
    "gates": runs.eval_gates,
    "ablation": eval_ablation,
    "zeroshot": runs.eval_zeroshot,
    "detect": eval_detect,
}
