"""The stable Python entry points: load_config, build_model, load."""

from __future__ import annotations

from pathlib import Path

from mmtlab.config import RunConfig, load_config
from mmtlab.data.tokenizer import load_tokenizer
from mmtlab.models import build_model
from mmtlab.models.model import MultimodalTransformer
from mmtlab.rundir import latest_checkpoint, load_model_weights

__all__ = ["build_model", "load", "load_config"]


def load(run_dir: str | Path, *, checkpoint: str | Path | None = None, device: str = "cpu") -> MultimodalTransformer:
    """The trained model of a run directory (latest checkpoint), in eval mode.

    `model.tokenizer` is the run's tokenizer and `model.run_config` its resolved config:
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
    model.run_config = cfg
    return model.to(device).eval()
