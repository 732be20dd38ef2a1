"""Validation during training: the callback `mmtlab train` gives the loop (train/loop.py calls it
every train.eval_every steps). Zero-shot retrieval on the first train.eval_max_images images of
the validation split for a model with a contrastive head; masked-token bits for an MLM-only
cross-encoder; nothing for the rest (an ITM-only cross-encoder has no cheap metric)."""

from __future__ import annotations

import torch

from mmtlab.config import RunConfig
from mmtlab.data.loader import image_source
from mmtlab.data.sources import load_split


class Validation:
    """Reads the validation images once, on the first call."""

    def __init__(self) -> None:
        self.records = self.source = None

    def __call__(self, model, tok, cfg: RunConfig, device: torch.device) -> dict:
        if self.records is None:
            self.records = load_split(cfg.data, cfg.data.val_split)[: cfg.train.eval_max_images]
            self.source = image_source(cfg, self.records, progress=False)
        kw = dict(batch_size=cfg.eval.batch_size, device=device, progress=False, source=self.source)
        if model.contrastive is not None:
            from mmtlab.eval.retrieval import evaluate_retrieval

            return evaluate_retrieval(model, tok, self.records, **kw)
        if model.mlm is None:
            return {}
        from mmtlab.eval.mlm import evaluate_mlm

        return evaluate_mlm(model, tok, self.records, **kw)
