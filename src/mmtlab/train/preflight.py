"""Checks of a run before anything is written to its directory: what the config file alone cannot
tell (the layout's arguments, files and folders it names, the shards a pattern expands to) and,
on --resume, that the given config is the run's own. `mmtlab train --dry-run` runs exactly these.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from mmtlab.config import ConfigError, RunConfig, load_config, resolve
from mmtlab.data.sources import annotation_file, image_root
from mmtlab.families import family_of
from mmtlab.models.fusion import PRESETS, build_layout
from mmtlab.rundir import checkpoint_dirs


def check_layout(cfg: RunConfig) -> None:
    """model.layout_args fit the preset's signature and values (a typo or `vision_depth: -1`)."""
    m = cfg.model
    fn = PRESETS[m.layout]
    params = inspect.signature(fn).parameters
    allowed = [p for p in params if p != "depth"]
    for key, value in m.layout_args.items():
        if key not in allowed:
            raise ConfigError(
                f"model.layout_args.{key}: not an argument of layout {m.layout}; allowed: {', '.join(allowed) or '-'}"
            )
        default = params[key].default
        counts_layers = default is None or (isinstance(default, int) and not isinstance(default, bool))
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 0
        if counts_layers and not (value is None and default is None) and bad:
            raise ConfigError(f"model.layout_args.{key}: expected a whole number >= 0, got {value!r}")
    try:
        build_layout(m.layout, m.depth, **m.layout_args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.layout_args: {e}") from None


def _is_file(path: str | None, field: str) -> None:
    if path is not None and not Path(path).is_file():
        what = "a directory" if Path(path).is_dir() else "missing"
        raise ConfigError(f"{field}: {path} is {what}; expected a file")


def check_paths(cfg: RunConfig) -> None:
    """The files and folders the config names exist and are of the right kind."""
    d = cfg.data
    _is_file(cfg.tokenizer.path, "tokenizer.path")
    _is_file(d.regions.detector, "data.regions.detector")
    if cfg.train.init_from is not None:
        src = Path(cfg.train.init_from)
        if (src / "config.json").is_file() and not (src / "config.yaml").exists():
            raise ConfigError(
                f"train.init_from: {src} is a Hugging Face model directory, not a run; import it first: "
                f"mmtlab import hf-clip {src} --out RUN_DIR"
            )
        is_ckpt = (src / "model.safetensors").is_file()
        if not is_ckpt and not checkpoint_dirs(src):
            raise ConfigError(
                f"train.init_from: {src} is neither a run directory with checkpoints nor a checkpoint directory"
            )
    if d.interleaved is not None and not Path(d.interleaved).exists():
        raise ConfigError(f"data.interleaved: {d.interleaved} does not exist")
    kind = family_of(cfg).data(cfg)
    if (
        d.format == "karpathy"
        and kind not in ("speech", "document_text")
        and not (kind == "documents" and d.mixture is not None and "pairs" not in d.mixture)
    ):
        annotation_file(d)  # DatasetNotFound names the missing file and how to build it
        images = image_root(d)
        if not images.is_dir():
            raise ConfigError(f"data.images: {images} is not a directory")
    if d.format == "webdataset":
        from mmtlab.data.stream import shard_urls

        shard_urls(d)  # a bad or huge brace pattern is a ConfigError


def resume_config(given: RunConfig, run_dir: Path) -> RunConfig:
    """The run's own config.yaml, after checking that `given` (the CONFIG and --set of a --resume)
    is the same run: a resumed run continues its own settings, so a different one is an error,
    never silently ignored. Only HOW_TO_RUN settings (processes, threads, logging) may change."""
    stored = load_config(run_dir / "config.yaml")
    complete = family_of(given).hook("complete")
    try:
        ours = complete(given) if complete is not None else given
    except ConfigError:
        ours = given
    t, i = stored.model.text, stored.model.image
    ours = resolve(ours, tokenizer=t, image_features=(i.region_dim, i.region_classes) if i.region_dim else None)
    a, b = _flat(ours.model_dump(mode="json")), _flat(stored.model_dump(mode="json"))
    diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in HOW_TO_RUN]
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} (run: {b.get(k)!r})" for k in diff[:4])
        raise ConfigError(
            f"--resume continues {run_dir / 'config.yaml'} as it is, and the given config differs: {shown}"
            f"{' ...' if len(diff) > 4 else ''}. Drop CONFIG/--set to resume, or train into a new --out"
        )
    for key in HOW_TO_RUN:  # taken from the given config: they change how the run runs, not what it learns
        section, field = key.split(".")
        setattr(getattr(stored, section), field, getattr(getattr(given, section), field))
    return stored


# Settings a resumed run may change: how it runs (processes, threads, memory, logging), not what it learns.
HOW_TO_RUN = (
    "train.data_parallel",
    "train.threads",
    "train.activation_checkpointing",
    "train.compile",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "data.num_workers",
    "eval.batch_size",
)


def _flat(node, prefix: str = "") -> dict:
    """A nested dict as {"a.b.c": value}."""
    if not isinstance(node, dict):
        return {prefix.rstrip("."): node}
    return {k: v for key, child in node.items() for k, v in _flat(child, f"{prefix}{key}.").items()}


def preflight(cfg: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """Every check before the run directory is written; returns the config the run trains (on
    --resume, the run's own)."""
    if resume and (run_dir / "config.yaml").is_file():
        cfg = resume_config(cfg, run_dir)
    complete = family_of(cfg).hook("complete")  # a config completed from other runs (Flamingo's frozen parts)
    if complete is not None:
        cfg = complete(cfg)
    check_layout(cfg)
    check_paths(cfg)
    return cfg
