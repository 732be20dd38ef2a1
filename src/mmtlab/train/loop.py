"""The training loop: AdamW, warmup + cosine, gradient accumulation, optional bf16 autocast,
clipping, seeded determinism, progress, metrics, atomic checkpoints and exact resume.

Determinism: data order depends only on (seed, epoch); every micro-step reseeds the global RNG
(dropout) and a masking generator from (seed, step, micro). So a resumed run replays exactly the
batches, masks and dropout of an uninterrupted one, given the restored weights and optimizer.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from mmtlab.config import RunConfig, dump_config
from mmtlab.data.loader import training_batches, training_dataset
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import TextTokenizer, load_tokenizer, train_wordpiece
from mmtlab.io import atomic_write_text
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.progress import stderr, training_progress
from mmtlab.train.checkpoint import init_from, latest_checkpoint, load_checkpoint, save_checkpoint
from mmtlab.train.logging import MetricsLog
from mmtlab.train.optim import build_optimizer, lr_at, set_lr


class RunDirError(RuntimeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    pairs_per_second: float
    skipped_images: int
    empty_captions: int
    val: dict | None


def step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 1_009 + micro) % (2**63 - 1)


def prepare_tokenizer(cfg: RunConfig, run_dir: Path, captions) -> TextTokenizer:
    saved = run_dir / "tokenizer.json"
    if saved.exists():
        return load_tokenizer(saved, cfg.model.text.max_len)
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path, cfg.model.text.max_len)
    elif cfg.train.init_from:  # a run initialised from another one must share its vocabulary
        src = Path(cfg.train.init_from)
        tok = load_tokenizer(src if (src / "tokenizer.json").exists() else src.parent.parent, cfg.model.text.max_len)
    else:
        tok = TextTokenizer(train_wordpiece(captions, cfg.tokenizer.vocab_size), cfg.model.text.max_len)
    tok.save(saved)
    return tok


def with_tokenizer(cfg: RunConfig, tok: TextTokenizer) -> RunConfig:
    """The config with the model's vocabulary and special ids taken from the tokenizer."""
    cfg = cfg.model_copy(deep=True)
    t = cfg.model.text
    t.vocab_size, t.pad_id, t.cls_id, t.sep_id, t.mask_id = (
        tok.vocab_size,
        tok.pad_id,
        tok.cls_id,
        tok.sep_id,
        tok.mask_id,
    )
    return cfg


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg` into `run_dir`. `stop_after` ends the process early (as if killed) after that
    many optimizer steps, having checkpointed them; a later `resume=True` call finishes the run."""
    console = console or stderr
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise RunDirError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if resume and (run_dir / "config.yaml").exists():
        from mmtlab.config import load_config

        cfg = load_config(run_dir / "config.yaml")
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device()

    pairs = training_dataset(cfg)
    tok = prepare_tokenizer(cfg, run_dir, pairs.captions())
    cfg = with_tokenizer(cfg, tok)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    val_records = (
        load_split(cfg.data, cfg.data.val_split)[: cfg.train.eval_max_images] if cfg.train.eval_every else None
    )

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    objectives = build_objectives(cfg).to(device)
    optimizer = build_optimizer(model, cfg.train)
    start = 0
    if ckpt is not None and resume:
        start = load_checkpoint(ckpt, model, optimizer)["step"]
        console.print(f"resuming {run_dir} from step {start}")
    elif cfg.train.init_from:
        loaded = init_from(cfg.train.init_from, model)
        console.print(f"initialised {loaded} tensors from {cfg.train.init_from}")
    total = cfg.train.steps
    end = total if stop_after is None else min(total, stop_after)
    tcfg = cfg.train
    per_step = tcfg.batch_size * tcfg.grad_accum
    batches = training_batches(pairs, cfg, tok, start_sample=start * per_step)
    log = MetricsLog(run_dir, resume_step=start if resume else None)
    if start == 0:
        log.log(
            0, event="start", params=model.num_params(), train_pairs=len(pairs), empty_captions=pairs.empty_captions
        )
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if tcfg.precision == "bf16" else contextlib.nullcontext()
    )
    skipped, seen, loss_value, val = 0, 0, float("nan"), None
    t0 = time.perf_counter()
    model.train()
    bar = training_progress(console) if progress else None
    with bar or contextlib.nullcontext():
        task = bar.add_task("training", total=total, completed=start, info="") if bar else None
        for step in range(start, end):
            lr = lr_at(step, tcfg)
            set_lr(optimizer, lr)
            parts_sum: dict[str, float] = {}
            loss_sum = 0.0
            for micro in range(tcfg.grad_accum):
                batch = next(batches).to(device)
                skipped += batch.skipped
                seen += len(batch)
                torch.manual_seed(step_seed(cfg.seed, step, micro))
                gen = torch.Generator(device).manual_seed(step_seed(cfg.seed, step, micro) + 1)
                with autocast:
                    loss, parts = objectives(model, batch, gen)
                (loss / tcfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / tcfg.grad_accum
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / tcfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip) if tcfg.grad_clip else None
            optimizer.step()
            objectives.after_optimizer_step(model, step + 1)  # e.g. data2vec's EMA teacher update
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum
            done = step + 1
            elapsed = time.perf_counter() - t0
            rate = seen / max(elapsed, 1e-9)
            if done % tcfg.log_every == 0 or done == end:
                metrics = {"loss": loss_value, **{f"loss/{k}": v for k, v in parts_sum.items()}, "lr": lr}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if model.contrastive is not None:
                    metrics["logit_scale"] = float(model.contrastive.scale().detach())
                log.log(done, **metrics, pairs_per_s=rate, skipped_images=skipped)
            if bar:
                bar.update(task, completed=done, info=f"loss {loss_value:.3f} | {rate:,.0f} pairs/s")
            if done % tcfg.checkpoint_every == 0 or done == end:
                save_checkpoint(
                    run_dir, done, model, optimizer, {"samples": done * per_step}, keep=tcfg.keep_checkpoints
                )
            if val_records is not None and (done % tcfg.eval_every == 0 or done == total):
                val = validate(model, tok, val_records, cfg, device)
                log.log(done, **{f"val/{k}": v for k, v in val.items() if isinstance(v, int | float)})
                model.train()
    log.close()
    return TrainResult(
        run_dir, end, loss_value, seen / max(time.perf_counter() - t0, 1e-9), skipped, pairs.empty_captions, val
    )


def validate(model, tok, records, cfg: RunConfig, device) -> dict:
    if model.contrastive is not None:
        from mmtlab.eval.retrieval import evaluate_retrieval

        return evaluate_retrieval(model, tok, records, batch_size=cfg.eval.batch_size, device=device, progress=False)
    from mmtlab.eval.mlm import evaluate_mlm

    return evaluate_mlm(model, tok, records, batch_size=cfg.eval.batch_size, device=device, progress=False)
