"""The stable Python entry points: load_config, build_model, load, load_model_and_transforms, load_detector."""

from __future__ import annotations

from pathlib import Path

from mmtlab.config import RunConfig, load_config
from mmtlab.data.pairs import ImagePreprocess
from mmtlab.data.tokenizer import load_tokenizer
from mmtlab.models import build_model
from mmtlab.models.model import MultimodalTransformer
from mmtlab.rundir import latest_checkpoint, load_model_weights

__all__ = ["build_model", "load", "load_config", "load_detector", "load_model_and_transforms"]


def load(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu") -> MultimodalTransformer:
    """The trained model of a run directory (latest checkpoint), in eval mode.

    `model.tokenizer` is the run's tokenizer, `model.preprocess` the image transform it was trained
    with (None for a model that reads detector regions) and `model.run_config` its resolved config:
    `tokens, mask = model.tokenizer(["a cat"]); model.encode_text(tokens, mask)`.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg: RunConfig = load_config(run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoints yet")
    model = build_model(cfg)
    load_model_weights(ckpt, model)
    model.tokenizer = load_tokenizer(run_dir / "tokenizer.json", cfg.model.text.max_len)
    model.preprocess = ImagePreprocess(cfg.model.image.size) if cfg.model.image.input == "patches" else None
    model.run_config = cfg
    return model.to(device).eval()


def load_model_and_transforms(run_dir: str | Path, **kwargs):
    """`(model, preprocess, tokenizer)` of a trained run, as open_clip's create_model_and_transforms:
    `preprocess(PIL image) -> [3, H, W]`, `tokenizer(list of str) -> (tokens, mask)`."""
    model = load(run_dir, **kwargs)
    return model, model.preprocess, model.tokenizer


def load_detector(det_dir: str | Path, *, device: str = "cpu"):
    """A detector fine-tuned by `mmtlab finetune detect` (models/detector.py), in eval mode, with
    `.tokenizer`, `.run_config` (the pretrained run's) and `.info` (its detector.json)."""
    import json

    from mmtlab.models.detector import Detector

    det_dir = Path(det_dir)
    if not (det_dir / "detector.json").exists():
        raise FileNotFoundError(f"{det_dir} is not a detector directory (no detector.json)")
    info = json.loads((det_dir / "detector.json").read_text(encoding="utf-8"))
    cfg: RunConfig = load_config(det_dir / "config.yaml")
    detector = Detector(build_model(cfg), info["image_size"])
    load_model_weights(det_dir, detector)
    detector.tokenizer = load_tokenizer(det_dir / "tokenizer.json", cfg.model.text.max_len)
    detector.run_config, detector.info = cfg, info
    return detector.to(device).eval()
