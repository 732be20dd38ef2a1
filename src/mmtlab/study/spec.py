"""A study: a grid of run-config variants x seeds, with the evaluations to run on each.

name: hendricks-small
base: ../runs/hendricks.yaml          # a run config (path relative to this file, or a configs/runs name)
seeds: [0, 1, 2]
set: [train.steps=300]                # overrides for every run
data:                                 # emoji-scenes builds the study needs (built once, cached)
  data/emoji-scenes-alt: {pretrain_styles: {alt_text: 1.0}}
axes:                                 # cartesian product; each value is a label -> overrides mapping
  layout:
    merged: {model.layout: merged}
    modality_specific: {model.layout: modality_specific}
  data:
    alt_text: {data.root: data/emoji-scenes-alt}
evals:
  retrieval: {split: test}
metrics: [retrieval.t2i_r1, retrieval.i2t_r1]
pretrain:                             # runs trained once, before the grid; cells name one as {pretrain.NAME}
  d2v: {base: ../runs/data2vec-image-text.yaml, set: [train.steps=600]}
# ... and then, e.g.:  axes: {init: {random: {}, data2vec: {train.init_from: "{pretrain.d2v}"}}}
# (eval parameters may name one too: evals: {ablation: {baseline: "{pretrain.text_only}"}})
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from mmtlab.config import CONFIG_DIR, ConfigError, Strict, load_config


class PretrainRun(Strict):
    base: str = Field(description="run config: a path relative to the study file, or a name in configs/runs")
    set: list[str] = Field(default_factory=list, description="overrides")


PRETRAIN_REF = re.compile(r"\{pretrain\.([A-Za-z0-9_.-]+)\}")


class StudySpec(Strict):
    name: str
    base: str = Field(description="run config: a path relative to the study file, or a name in configs/runs")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    set: list[str] = Field(default_factory=list, description="overrides applied to every run")
    data: dict[str, dict[str, Any]] = Field(default_factory=dict, description="dataset dir -> build arguments")
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    exclude: list[dict[str, str]] = Field(default_factory=list, description="axis->label combinations to skip")
    evals: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"retrieval": {"split": "test"}})
    metrics: list[str] = Field(
        default_factory=lambda: [f"retrieval.{d}_r{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)],
        description="eval.metric names shown in the table",
    )
    pretrain: dict[str, PretrainRun] = Field(
        default_factory=dict, description="runs trained before the grid, referred to as {pretrain.NAME} in overrides"
    )

    @model_validator(mode="after")
    def _check(self):
        for axis, labels in self.axes.items():
            if not labels:
                raise ValueError(f"axes.{axis}: needs at least one label")
        for ex in self.exclude:
            for axis, label in ex.items():
                if axis not in self.axes or label not in self.axes[axis]:
                    raise ValueError(f"exclude: {axis}={label} is not a label of the study's axes")
        for m in self.metrics:
            if m.split(".", 1)[0] not in self.evals or "." not in m:
                raise ValueError(f"metrics: {m!r} must be <eval>.<metric> with <eval> one of {list(self.evals)}")
        values = [*self.set, *(str(v) for labels in self.axes.values() for ov in labels.values() for v in ov.values())]
        values += [str(v) for params in self.evals.values() for v in params.values()]
        for name in {n for v in values for n in PRETRAIN_REF.findall(v)}:
            if name not in self.pretrain:
                raise ValueError(f"{{pretrain.{name}}} is used but pretrain has no run {name!r}")
        return self


@dataclass(frozen=True)
class Cell:
    labels: tuple[tuple[str, str], ...]  # (axis, label) in axis order
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return ", ".join(f"{a}={lab}" for a, lab in self.labels) or "base"

    @property
    def dirname(self) -> str:
        return "__".join(re.sub(r"[^A-Za-z0-9_.+-]", "-", lab) for _, lab in self.labels) or "base"


def as_override(key: str, value: Any) -> str:
    # JSON is YAML, so strings, numbers, lists and dicts survive `--set` parsing unchanged.
    return f"{key}={json.dumps(value)}"


def load_study(path: str | Path) -> tuple[StudySpec, Path]:
    """The study and the resolved path of its base run config."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    try:
        spec = StudySpec.model_validate(raw or {})
    except ValidationError as e:
        from mmtlab.config import format_validation_error

        raise ConfigError(f"{path}: " + format_validation_error(e).replace("config", "study", 1)) from None
    return spec, resolve_run_config(path, spec.base)


def resolve_run_config(study: Path, name: str) -> Path:
    """A run config named in a study: relative to the study file, or a name in configs/runs."""
    found = (Path(study).parent / name).resolve()
    if not found.exists():
        found = CONFIG_DIR / "runs" / f"{name.removesuffix('.yaml')}.yaml"
    if not found.exists():
        raise ConfigError(f"{study}: run config {name!r} not found (relative to the study file or configs/runs)")
    return found


def pretrain_configs(spec: StudySpec, study: Path) -> dict:
    """The validated run config of each pretraining run of the study, by name."""
    out = {}
    for name, run in spec.pretrain.items():
        try:
            out[name] = load_config(resolve_run_config(study, run.base), run.set)
        except ConfigError as e:
            raise ConfigError(f"study pretrain [{name}]: {e}") from None
    return out


def expand(spec: StudySpec) -> list[Cell]:
    axes = list(spec.axes.items())
    cells = []
    for combo in product(*[list(labels.items()) for _, labels in axes]):
        labels = tuple((axis, label) for (axis, _), (label, _) in zip(axes, combo))
        if any(all(dict(labels).get(a) == lab for a, lab in ex.items()) for ex in spec.exclude):
            continue
        overrides = tuple(as_override(k, v) for _, ov in combo for k, v in ov.items())
        cells.append(Cell(labels, overrides))
    return cells


def with_pretrained(value: Any, pretrained: dict[str, Path]) -> Any:
    """`value` with every {pretrain.NAME} replaced by that run's directory (strings only)."""
    if not isinstance(value, str):
        return value
    return PRETRAIN_REF.sub(lambda m: str(pretrained[m.group(1)]), value)


def cell_config(spec: StudySpec, base: Path, cell: Cell, seed: int, pretrained: dict[str, Path] | None = None):
    """The validated run config of one cell and seed (raises ConfigError naming the cell).
    `pretrained` maps pretraining run names to their directories, for {pretrain.NAME}."""
    overrides = [*spec.set, *cell.overrides, f"seed={seed}"]
    if pretrained:
        overrides = [with_pretrained(o, pretrained) for o in overrides]
    try:
        return load_config(base, overrides)
    except ConfigError as e:
        raise ConfigError(f"study cell [{cell.name}]: {e}") from None
