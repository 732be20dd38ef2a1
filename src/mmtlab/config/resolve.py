"""Every derived field of a run config, filled in one place.

Validators (config/schema.py) only check; this step completes. `load_config` calls it with what a
config file alone determines; training calls it again once the tokenizer and the image inputs
exist. It is idempotent: a field that is already set is kept, so a resolved config.yaml loads back
unchanged. (A family whose config comes from other runs, Flamingo, completes it through its
registry hook `complete` before training: mmtlab/families.py.)
"""

from __future__ import annotations

from typing import Protocol

from mmtlab.config.objectives import SIGMOID_LOSSES, heads_for
from mmtlab.config.schema import RunConfig
from mmtlab.config.sections import DATA2VEC_DEFAULTS


class Vocabulary(Protocol):
    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int


def resolve(
    cfg: RunConfig, *, tokenizer: Vocabulary | None = None, image_features: tuple[int, int] | None = None
) -> RunConfig:
    """A copy of `cfg` with every derived field filled in:
    - model.outputs: the heads the objectives train;
    - model.logit_bias: -10 for a sigmoid loss (SigLIP's initialisation, Zhai et al. 2023);
    - model.data2vec: the EMA anneal over train.steps, each modality's top_k from its default share
      of the depth, the image mask block size scaled from 16 of 14x14 patches to this grid;
    - with `tokenizer`: model.text.vocab_size and the special ids;
    - with `image_features` = (feature size, classes) of detector regions: model.image.region_dim
      and region_classes."""
    cfg = cfg.model_copy(deep=True)
    m = cfg.model
    if m.outputs is None:
        m.outputs = heads_for(cfg.objectives)
    if m.logit_bias is None and any(o in cfg.objectives for o in SIGMOID_LOSSES):
        m.logit_bias = -10.0
    d = m.data2vec
    if d is not None:
        if d.ema_anneal_steps is None:
            d.ema_anneal_steps = cfg.train.steps
        for name in d.modalities:
            mc = getattr(d, name)
            if mc.top_k is None:
                mc.top_k = max(1, round(DATA2VEC_DEFAULTS[name]["top_k_share"] * m.depth))
            if name == "image" and mc.mask_length is None:
                patches = (m.image.size // m.image.patch) ** 2
                mc.mask_length = max(1, round(16 * patches / 196))
    if tokenizer is not None:
        t = tokenizer
        m.text.vocab_size, m.text.pad_id, m.text.cls_id, m.text.sep_id, m.text.mask_id = (
            t.vocab_size, t.pad_id, t.cls_id, t.sep_id, t.mask_id,
        )  # fmt: skip
    if image_features is not None and m.image.input == "regions":
        m.image.region_dim, m.image.region_classes = image_features
    return cfg
