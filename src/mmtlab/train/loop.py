"""The training loop: AdamW, warmup + cosine, gradient accumulation, optional bf16 autocast,
clipping, seeded determinism, progress, metrics, atomic checkpoints and exact resume.

Determinism: data order depends only on (seed, epoch); every micro-step reseeds the global RNG
(dropout) and a masking generator from (seed, step, micro). So a resumed run replays exactly the
batches, masks and dropout of an uninterrupted one, given the restored weights and optimizer.

Under torchrun every process runs `train` with the same arguments (train/distributed.py): each
takes batch_size / N pairs of every global batch, rank 0 writes the tokenizer, config, metrics and
progress, checkpoints are sharded (train/sharded_checkpoint.py) and resume on any world size.
SIGTERM and Ctrl-C end the run at the next step boundary with a checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from safetensors import SafetensorError

from mmtlab.config import ConfigError, RunConfig, dump_config, resolve
from mmtlab.data.loader import region_features, training_batches, training_dataset
from mmtlab.data.tokenizer import TextTokenizer, load_tokenizer, train_wordpiece
from mmtlab.families import family_of
from mmtlab.io import atomic_write_text
from mmtlab.models import build_model
from mmtlab.objectives import build_objectives
from mmtlab.progress import stderr, training_progress
from mmtlab.rundir import RunFileError, checkpoint_dirs, latest_checkpoint
from mmtlab.train.blocks import apply_block_options
from mmtlab.train.checkpoint import (
    DISK_ERRORS,
    CheckpointError,
    describe_tensors,
    imported_tensors,
    init_from,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
    write_failure_message,
)
from mmtlab.train.distributed import DataParallel, parallelize
from mmtlab.train.distributed import setup as setup_distributed
from mmtlab.train.divergence import NonFiniteGuard
from mmtlab.train.lock import run_dir_lock
from mmtlab.train.logging import MetricsLog
from mmtlab.train.optim import build_optimizer, lr_at, set_lr
from mmtlab.train.preflight import preflight
from mmtlab.train.signals import StopOnSignal


class RunDirError(RuntimeError):
    pass


# validate(model, tokenizer, resolved config, device) -> metrics, every train.eval_every steps
Validate = Callable[[torch.nn.Module, TextTokenizer, RunConfig, torch.device], dict]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    pairs_per_second: float
    skipped_images: int
    empty_captions: int
    val: dict | None
    interrupted: bool = False  # stopped early by SIGTERM, with a checkpoint of the last step


def step_seed(seed: int, step: int, micro: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + step * 1_009 + micro + rank * 0x9E3779B97F4A7C15) % (2**63 - 1)


def prepare_tokenizer(cfg: RunConfig, run_dir: Path, captions, reuse: bool = True) -> TextTokenizer:
    """The run's tokenizer: its own when resuming (`reuse`); else the configured file, the one of
    the run it is initialised from, or WordPiece trained on the captions. A tokenizer.json left by
    an attempt that failed before its first checkpoint is replaced, not reused."""
    saved = run_dir / "tokenizer.json"
    if reuse and saved.exists():
        return load_tokenizer(saved, cfg.model.text.max_len)
    if cfg.tokenizer.path:
        tok = load_tokenizer(cfg.tokenizer.path, cfg.model.text.max_len)
    elif cfg.train.init_from:  # a run initialised from another one must share its vocabulary
        src = Path(cfg.train.init_from)
        run = src.parent.parent if (src / "model.safetensors").is_file() else src  # a checkpoint dir, or a run
        tok = load_tokenizer(run / "tokenizer.json", cfg.model.text.max_len)
    else:
        tok = TextTokenizer(train_wordpiece(captions, cfg.tokenizer.vocab_size), cfg.model.text.max_len)
    tok.save(saved)
    return tok


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
    validate: Validate | None = None,
) -> TrainResult:
    """Train `cfg` into `run_dir`. `stop_after` ends the process early (as if killed) after that
    many optimizer steps, having checkpointed them; a later `resume=True` call finishes the run.
    `validate(model, tokenizer, cfg, device) -> metrics` runs every train.eval_every steps (the
    CLI passes eval/validation.py's; the loop itself knows no evaluation).

    Under torchrun (or in a process group the caller initialised) every process calls this alike."""
    dp = setup_distributed()
    console = console or stderr
    if cfg.train.eval_every and validate is None and dp.is_main:
        console.print("train.eval_every is set, but no validation callback was given: validation is skipped")
    run_dir = Path(run_dir)
    try:
        cfg = preflight(cfg, run_dir, resume)  # every check that can fail before anything is written
        with run_dir_lock(run_dir, dp, error=RunDirError):  # a second launch into this --out fails at once
            result = _train(cfg, run_dir, dp, resume, stop_after, console, progress and dp.is_main, validate)
    except OSError as e:
        dp.close(barrier=False)
        if e.errno in DISK_ERRORS:  # a full disk outside a checkpoint write: one line, what is safe
            raise CheckpointError(write_failure_message(run_dir, None, e)) from e
        raise
    except BaseException:
        dp.close(barrier=False)  # other ranks may be gone: waiting for them could hang
        raise
    dp.close(barrier=True)
    return result


class _NoLog:
    def log(self, step: int, **metrics) -> None:
        pass

    def close(self) -> None:
        pass


def _train(
    cfg: RunConfig,
    run_dir: Path,
    dp: DataParallel,
    resume: bool,
    stop_after: int | None,
    console,
    progress: bool,
    validate: Validate | None,
) -> TrainResult:
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and not resume:
        raise RunDirError(f"{run_dir} already holds checkpoints; pass --resume to continue it or choose another --out")
    if cfg.train.batch_size % dp.world:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {dp.world} processes")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and dp.is_main:
        remove_partial_checkpoints(run_dir)  # left by a process killed while writing
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = dp.device

    fam = family_of(cfg)  # (its `complete` hook ran in preflight)
    resuming = ckpt is not None and resume
    pairs = training_dataset(cfg)
    if dp.is_main:
        tok = prepare_tokenizer(cfg, run_dir, pairs.captions(), reuse=resuming)
    dp.barrier()
    if not dp.is_main:
        tok = load_tokenizer(run_dir / "tokenizer.json", cfg.model.text.max_len)
    cfg = resolve(cfg, tokenizer=tok, image_features=region_features(cfg, getattr(pairs, "images", None)))
    if dp.is_main:
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    validate = validate if cfg.train.eval_every else None

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    objectives = build_objectives(cfg).to(device)
    objectives.bind_data(pairs, tok)
    load_pretrained = fam.hook("load_pretrained")  # frozen parts from other runs (Flamingo)
    if not resuming and load_pretrained is not None:
        loaded = load_pretrained(model)
        if dp.is_main:
            console.print(
                f"loaded {loaded} frozen tensors; {model.num_params(trainable_only=True):,} of "
                f"{model.num_params():,} parameters train"
            )
    if not resuming and cfg.train.init_from:
        loaded = init_from(cfg.train.init_from, model)
        if dp.is_main:
            imported = imported_tensors(cfg.train.init_from)
            what = "" if imported is None else f" (those it imported: {describe_tensors(sorted(imported))})"
            console.print(f"initialised {loaded} tensors from {cfg.train.init_from}{what}")
    apply_block_options(model, cfg.train)
    par = parallelize(model, dp, cfg.train)  # before the optimizer: FSDP2 replaces the parameters
    optimizer = build_optimizer(model, cfg.train)
    start, ckpt_meta = 0, {}
    if resuming:
        ckpt_meta = _load_intact_checkpoint(run_dir, model, optimizer, dp, console)
        start = ckpt_meta["step"]
        if dp.is_main:
            console.print(f"resuming {run_dir} from step {start}")
    total = cfg.train.steps
    end = total if stop_after is None else min(total, stop_after)
    tcfg = cfg.train
    per_step = tcfg.batch_size * tcfg.grad_accum
    batches = training_batches(
        pairs, cfg, tok, start_sample=start * per_step, rank=dp.rank, world=dp.world, resume_state=ckpt_meta
    )
    loggers = tcfg.loggers
    log = (
        MetricsLog(run_dir, start if resume else None, "tensorboard" in loggers, "wandb" in loggers, cfg.model_dump())
        if dp.is_main
        else _NoLog()
    )
    guard = NonFiniteGuard(
        tcfg.on_nonfinite,
        run_dir,
        agree=dp.any,
        skipped=ckpt_meta.get("nonfinite_steps", 0),
        log=log,
    )
    if start == 0:
        extra = {"processes": dp.world, "data_parallel": tcfg.data_parallel} if dp.distributed else {}
        size = {"train_pairs": len(pairs)} if hasattr(pairs, "__len__") else {}
        if hasattr(pairs, "corrupt_documents"):  # interleaved shards: unreadable lines were skipped
            extra["corrupt_documents"] = pairs.corrupt_documents
        if model.num_params(trainable_only=True) < model.num_params():  # frozen parts (Flamingo)
            extra["trainable_params"] = model.num_params(trainable_only=True)
        log.log(0, event="start", params=model.num_params(), **size, empty_captions=pairs.empty_captions, **extra)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if tcfg.precision == "bf16" else contextlib.nullcontext()
    )
    skipped, seen, loss_value, val, stopped = 0, 0, float("nan"), None, False
    damaged = 0  # streamed data: truncated or unreadable shards met before the samples consumed
    # a stream's position is only meaningful for the same readers (data/stream.py)
    streamed = cfg.data.format == "webdataset"
    stream_state = {"stream": {"world": dp.world, "workers": cfg.data.num_workers}} if streamed else {}
    t0 = time.perf_counter()
    model.train()
    bar = training_progress(console) if progress else None
    with bar or contextlib.nullcontext(), StopOnSignal() as stop:
        task = bar.add_task("training", total=total, completed=start, info="") if bar else None
        for step in range(start, end):
            lr = lr_at(step, tcfg)
            set_lr(optimizer, lr)
            parts_sum: dict[str, float] = {}
            loss_sum = 0.0
            for micro in range(tcfg.grad_accum):
                batch = next(batches).to(device)
                skipped += batch.skipped
                damaged += getattr(batch, "damaged_shards", 0)
                seen += len(batch)
                seed = step_seed(cfg.seed, step, micro, dp.rank)
                torch.manual_seed(seed)
                gen = torch.Generator(device).manual_seed(seed + 1)
                par.begin_micro_step(last=micro == tcfg.grad_accum - 1)
                with autocast:
                    loss, parts = objectives(model, batch, gen, dp if dp.distributed else None)
                (loss / tcfg.grad_accum).backward()
                loss_sum += float(loss.detach()) / tcfg.grad_accum
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + float(v) / tcfg.grad_accum
            par.end_backward()
            grad_norm = par.clip_grad_norm_(tcfg.grad_clip) if tcfg.grad_clip else None
            if guard.check(step + 1, loss_sum, grad_norm, model.parameters()) == "ok":  # or skip, or stop
                optimizer.step()
                objectives.after_optimizer_step(model, step + 1)  # e.g. data2vec's EMA teacher update
            optimizer.zero_grad(set_to_none=True)
            loss_value = loss_sum
            done = step + 1
            elapsed = time.perf_counter() - t0
            rate = seen / max(elapsed, 1e-9)
            stopped = dp.any(stop.requested)
            if done % tcfg.log_every == 0 or done == end or stopped:
                if dp.distributed:  # the global batch's mean loss and all ranks' counts
                    keys = list(parts_sum)
                    sums = dp.sum([loss_value, *parts_sum.values(), seen, skipped])
                    loss_value, parts_sum = sums[0] / dp.world, {k: v / dp.world for k, v in zip(keys, sums[1:])}
                    rate, skipped_all = sums[-2] / max(elapsed, 1e-9), int(sums[-1])
                else:
                    skipped_all = skipped
                metrics = {"loss": loss_value, **{f"loss/{k}": v for k, v in parts_sum.items()}, "lr": lr}
                if grad_norm is not None:
                    metrics["grad_norm"] = float(grad_norm)
                if model.contrastive is not None:
                    metrics["logit_scale"] = float(model.contrastive.scale().detach())
                if streamed:  # all ranks' count (README: metrics.jsonl has skipped_images and damaged_shards)
                    metrics["damaged_shards"] = int(dp.sum([damaged])[0])
                log.log(done, **metrics, pairs_per_s=rate, skipped_images=skipped_all, **guard.metrics())
            if bar:
                bar.update(task, completed=done, info=f"loss {loss_value:.3f} | {rate:,.0f} pairs/s")
            if done % tcfg.checkpoint_every == 0 or done == end or stopped:
                guard.check_weights(done, model)  # a checkpoint of non-finite weights is never written
                state = {"samples": done * per_step, **stream_state, **guard.state()}
                if dp.distributed:
                    from mmtlab.train.sharded_checkpoint import save_sharded_checkpoint

                    save_sharded_checkpoint(run_dir, done, model, optimizer, state, dp, keep=tcfg.keep_checkpoints)
                else:
                    save_checkpoint(run_dir, done, model, optimizer, state, keep=tcfg.keep_checkpoints)
            if stopped:
                why = stop.reason or "SIGTERM"  # a rank that did not get the signal stops with the others
                log.log(done, event="stopped", reason=why)
                if dp.is_main:
                    console.print(
                        f"{why}: stopped after step {done} with a checkpoint; "
                        f"continue with `mmtlab train --resume --out {run_dir}`"
                    )
                end = done
                break
            if validate is not None and (done % tcfg.eval_every == 0 or done == total):
                val = validate(model, tok, cfg, device)
                log.log(done, **{f"val/{k}": v for k, v in val.items() if isinstance(v, int | float)})
                model.train()
    log.close()
    if stopped and stop.interrupted:  # Ctrl-C, checkpointed above: the caller sees KeyboardInterrupt (CLI: exit 130)
        raise KeyboardInterrupt
    elapsed = time.perf_counter() - t0
    if dp.distributed:  # the run's figures, not this rank's
        seen, skipped = (int(v) for v in dp.sum([seen, skipped]))
    return TrainResult(
        run_dir, end, loss_value, seen / max(elapsed, 1e-9), skipped, pairs.empty_captions, val, interrupted=stopped
    )


def _load_intact_checkpoint(run_dir: Path, model, optimizer, dp: DataParallel, console) -> dict:
    """The newest checkpoint that loads; a damaged one (truncated file, bad JSON, NaN weights) is
    reported and the one before it is tried."""
    candidates = list(reversed(checkpoint_dirs(run_dir)))
    for i, ckpt in enumerate(candidates):
        try:
            return _load_checkpoint(ckpt, model, optimizer, dp)
        except (RunFileError, OSError, ValueError, KeyError, SafetensorError) as e:
            if i + 1 == len(candidates):
                raise RunFileError(f"{ckpt}: cannot resume from it ({e}), and no earlier checkpoint loads") from None
            if dp.is_main:
                console.print(f"{ckpt.name} is damaged ({e}); resuming from {candidates[i + 1].name} instead")
    raise RunFileError(f"{run_dir}: no checkpoint to resume from")


def _load_checkpoint(ckpt: Path, model, optimizer, dp: DataParallel) -> dict:
    """Whichever format `ckpt` has (single-process or sharded) into this process's model and optimizer."""
    from mmtlab.train.sharded_checkpoint import is_sharded, load_full_checkpoint, load_sharded_checkpoint

    if is_sharded(ckpt):
        return load_sharded_checkpoint(ckpt, model, optimizer)
    if dp.distributed:
        return load_full_checkpoint(ckpt, model, optimizer)
    return load_checkpoint(ckpt, model, optimizer)
