"""The objectives a run config may name, the output head each trains and the options each takes
(checked here: an option given to a loss that does not read it is an error)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmtlab.config.base import Strict

ObjectiveName = Literal[
    "contrastive",
    "siglip",
    "focal_contrastive",
    "zloss",
    "mlm",
    "caption",
    "mrm_cls",
    "mrm_kl",
    "mrm_regress",
    "itm",
    "itm_contrastive",
    "data2vec",
]
MRM_OBJECTIVES = ("mrm_cls", "mrm_kl", "mrm_regress")
# The output head each objective trains (caption uses the decoder's tied LM head, always present).
OBJECTIVE_HEADS = {
    "contrastive": "contrastive",
    "siglip": "contrastive",
    "focal_contrastive": "contrastive",
    "zloss": "contrastive",
    "mlm": "mlm",
    "mrm_cls": "mrm",
    "mrm_kl": "mrm",
    "mrm_regress": "mrm",
    "itm": "itm",
    "itm_contrastive": "itm",
}
SIGMOID_LOSSES = ("siglip", "focal_contrastive")


class ObjectiveConfig(Strict):
    weight: float = Field(1.0, ge=0)
    mask_prob: float | None = Field(
        None, gt=0, lt=1, description="mlm: fraction of tokens to mask; mrm_*: of regions (0.15)"
    )
    negatives: Literal["random", "hard"] | None = Field(
        None, description="itm / itm_contrastive: random batch captions, or hard ones mined from contrastive similarity"
    )
    loss: Literal["mse", "huber"] | None = Field(None, description="mrm_regress: regression loss (mse)")
    candidates: int | None = Field(
        None, ge=2, description="itm_contrastive: captions scored per image, the positive included (32)"
    )
    gamma: float | None = Field(None, ge=0, description="focal_contrastive: focusing parameter (1.0)")


def heads_for(objectives) -> list[str]:
    """The output heads the objectives train, in order (caption uses the decoder's tied LM head)."""
    return list(dict.fromkeys(OBJECTIVE_HEADS[o] for o in objectives if o in OBJECTIVE_HEADS))


# Which objectives each option applies to.
_OPTION_OWNERS = {
    "mask_prob": ("mlm", *MRM_OBJECTIVES),
    "negatives": ("itm", "itm_contrastive"),
    "loss": ("mrm_regress",),
    "candidates": ("itm_contrastive",),
    "gamma": ("focal_contrastive",),
}


def check_objective_options(cfg) -> None:
    for name, oc in cfg.objectives.items():
        for option, owners in _OPTION_OWNERS.items():
            if getattr(oc, option) is not None and name not in owners:
                raise ValueError(f"objectives.{name}.{option}: only applies to {', '.join(owners)}")
    mrm = [n for n in MRM_OBJECTIVES if n in cfg.objectives]
    if mrm and cfg.model.image.input != "regions":
        raise ValueError(f"objectives.{mrm[0]}: masked region modelling needs model.image.input: regions")
    probs = {cfg.objectives[n].mask_prob for n in mrm} - {None}
    if len(probs) > 1:
        raise ValueError(f"objectives: {', '.join(mrm)} share one region masking; give them the same mask_prob")
    for name in ("itm", "itm_contrastive"):
        oc = cfg.objectives.get(name)
        if oc is not None and oc.negatives == "hard" and "contrastive" not in cfg.objectives:
            raise ValueError(
                f"objectives.{name}.negatives: hard negatives are mined from contrastive similarities; "
                "add the contrastive objective"
            )
