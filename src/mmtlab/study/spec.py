"""A study: a grid of run-config variants x seeds, with the evaluations to run on each.

name: hendricks-small
base: ../runs/hendricks.yaml          # a run config (path relative to this file, or a configs/runs name)
seeds: [0, 1, 2]
set: [train.steps=300]                # overrides for every run
data:                                 # emoji-scenes builds the study needs (built once, cached)
  data/emoji-scenes-alt: {pretrain_styles: {alt_text: 1.0}}
documents:                            # interleaved documents (Flamingo), built after `data`, cached
  data/docs: {data: data/emoji-scenes-alt, max_chunks: 16}
axes:                                 # cartesian product; each value is a label -> overrides mapping
  layout:
    merged: {model.layout: merged}
    modality_specific: {model.layout: modality_specific}
  data:
    alt_text: {data.root: data/emoji-scenes-alt}
evals:
  retrieval: {split: test}
metrics: [retrieval.t2i_r1, retrieval.i2t_r1]
contrasts: ["retrieval.t2i_r1 - retrieval.i2t_r1"]   # within each cell, seed by seed
pretrain:                             # runs trained once, before the grid; cells name one as {pretrain.NAME}
  d2v: {base: ../runs/data2vec-image-text.yaml, set: [train.steps=600]}
# ... and then, e.g.:  axes: {init: {random: {}, data2vec: {train.init_from: "{pretrain.d2v}"}}}
# (eval parameters may name one too: evals: {ablation: {baseline: "{pretrain.text_only}"}})
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, model_validator

from mmtlab.config import CONFIG_DIR, ConfigError, Strict, load_config
from mmtlab.config.load import parse_yaml


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
    documents: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="interleaved document dir -> build arguments (after `data`; cached)"
    )
    axes: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)
    exclude: list[dict[str, str]] = Field(default_factory=list, description="axis->label combinations to skip")
    evals: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"retrieval": {"split": "test"}})
    metrics: list[str] = Field(
        default_factory=lambda: [f"retrieval.{d}_r{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)],
        description="eval.metric names shown in the table",
    )
    contrasts: list[str] = Field(
        default_factory=list,
        description='within-cell differences "A - B" of two metrics, seed by seed (a model minus its control)',
    )
    pretrain: dict[str, PretrainRun] = Field(
        default_factory=dict, description="runs trained before the grid, referred to as {pretrain.NAME} in overrides"
    )

    @model_validator(mode="after")
    def _check(self):
        if not _is_plain_name(self.name):
            raise ValueError(f"name: {self.name!r} must be a plain folder name (no '/', '\\', '..' or absolute path)")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds: {repeated} appear more than once (each seed is one run)")
        for axis, labels in self.axes.items():
            if not labels:
                raise ValueError(f"axes.{axis}: needs at least one label")
            for label, overrides in labels.items():
                if _dir_part(label) in ("", ".", ".."):
                    raise ValueError(f"axes.{axis}: label {label!r} cannot name a run directory")
                # A mapping replaces its whole section, so it would silently drop what `set` put there.
                for key in (k for k, v in overrides.items() if isinstance(v, dict)):
                    if dropped := [o for o in self.set if o.startswith(f"{key}.")]:
                        raise ValueError(
                            f"axes.{axis}.{label}: {key}: {{...}} replaces the whole {key!r} section, dropping "
                            f"set: {', '.join(dropped)}; write dotted keys ({key}.NAME: value) instead"
                        )
        for name in self.pretrain:
            if not _is_plain_name(name) or not PRETRAIN_REF.fullmatch(f"{{pretrain.{name}}}"):
                raise ValueError(f"pretrain: run name {name!r} must be letters, digits, '_', '.' or '-' (not . or ..)")
        for ex in self.exclude:
            for axis, label in ex.items():
                if axis not in self.axes or label not in self.axes[axis]:
                    raise ValueError(f"exclude: {axis}={label} is not a label of the study's axes")
        for m in self.metrics:
            if m.split(".", 1)[0] not in self.evals or "." not in m:
                raise ValueError(f"metrics: {m!r} must be <eval>.<metric> with <eval> one of {list(self.evals)}")
        for c in self.contrasts:
            sides = split_contrast(c)
            if sides is None or any(m not in self.metrics for m in sides):
                raise ValueError(f"contrasts: {c!r} must be 'A - B' with A and B among the study's metrics")
        values = [*self.set, *(str(v) for labels in self.axes.values() for ov in labels.values() for v in ov.values())]
        values += [str(v) for params in self.evals.values() for v in params.values()]
        for name in {n for v in values for n in PRETRAIN_REF.findall(v)}:
            if name not in self.pretrain:
                raise ValueError(f"{{pretrain.{name}}} is used but pretrain has no run {name!r}")
        return self


def split_contrast(contrast: str) -> tuple[str, str] | None:
    """'fewshot.classify.scores.8 - fewshot_blind.classify.scores.8' -> its two metrics."""
    sides = contrast.split(" - ")
    return (sides[0].strip(), sides[1].strip()) if len(sides) == 2 and all(x.strip() for x in sides) else None


@dataclass(frozen=True)
class Cell:
    labels: tuple[tuple[str, str], ...]  # (axis, label) in axis order
    overrides: tuple[str, ...]

    @property
    def name(self) -> str:
        return ", ".join(f"{a}={lab}" for a, lab in self.labels) or "base"

    def matches(self, selection: Iterable[tuple[str, str]]) -> bool:
        """Whether the cell has every (axis, label) of `selection` (an `exclude` entry, `--only`)."""
        return all(dict(self.labels).get(a) == lab for a, lab in selection)

    @property
    def dirname(self) -> str:
        return "__".join(_dir_part(lab) for _, lab in self.labels) or "base"


def _dir_part(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", label)


def _is_plain_name(name: str) -> bool:
    """A name usable as one folder: not empty, no separator, not . or .., no NUL."""
    return bool(name) and name.strip(".") != "" and not any(c in name for c in "/\\\0")


def check_run_dirs(spec: StudySpec, cells: list[Cell], out: Path, study: Path) -> None:
    """Two cells whose labels map to one run directory (`a/b` and `a-b`) would share one run and
    one row of numbers: an error naming both. And no run directory may lie outside `out`."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        other = seen.setdefault(cell.dirname, cell)
        if other is not cell:
            raise ConfigError(
                f"{study}: cells '{other.name}' and '{cell.name}' map to the same run directory "
                f"runs/{cell.dirname}; rename a label"
            )
    root = Path(out).resolve()
    dirs = [Path(out) / "runs" / c.dirname for c in cells] + [Path(out) / "pretrain" / n for n in spec.pretrain]
    for d in dirs:
        if not d.resolve().is_relative_to(root):
            raise ConfigError(f"{study}: run directory {d} would lie outside the study folder {out}")


def _type_error(fn, params: dict[str, Any]) -> str | None:
    """Why `fn(**params)` would fail on a parameter's type (its annotation), or None."""
    import typing

    from pydantic import TypeAdapter

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be resolved here: the call itself will tell
        return None
    for key, value in params.items():
        if key in hints and not (isinstance(value, str) and PRETRAIN_REF.search(value)):
            try:
                TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as e:
                return f"{key}={value!r}: {e.errors()[0]['msg']}"
    return None


def check_calls(spec: StudySpec, study: Path) -> None:
    """The evaluations and dataset builds a study names, with its parameters checked against the
    functions' signatures, before any run trains (a typo must not fail after hours of training)."""
    import inspect

    from mmtlab.data.emoji_scenes import build_emoji_scenes
    from mmtlab.data.interleaved import build_interleaved
    from mmtlab.evaluate import EVALS

    unknown = [e for e in spec.evals if e not in EVALS]
    if unknown:
        raise ConfigError(f"{study}: evals {unknown} unknown; available: {', '.join(EVALS)}")
    calls = [(f"evals.{name}", EVALS[name], ("RUN_DIR",), params) for name, params in spec.evals.items()]
    calls += [(f"data.{d}", build_emoji_scenes, (d,), kw) for d, kw in spec.data.items()]
    calls += [(f"documents.{d}", build_interleaved, (d,), kw) for d, kw in spec.documents.items()]
    for where, fn, args, params in calls:
        sig = inspect.signature(fn)
        fixed = {"progress"} if where.startswith("evals.") else set()  # the study passes it itself
        taken = sorted(fixed & set(params))
        try:
            if taken:
                raise TypeError(f"{taken[0]!r} is set by the study")
            sig.bind(*args, **params)
        except TypeError as e:
            allowed = [n for n in sig.parameters if n not in ("run_dir", "out_dir", *fixed)]
            raise ConfigError(f"{study}: {where}: {e}; parameters: {', '.join(allowed)}") from None
        bad = _type_error(fn, params)
        if bad:
            raise ConfigError(f"{study}: {where}: {bad}")


def as_override(key: str, value: Any) -> str:
    # JSON is YAML, so strings, numbers, lists and dicts survive `--set` parsing unchanged.
    return f"{key}={json.dumps(value)}"


def load_study(path: str | Path) -> tuple[StudySpec, Path]:
    """The study and the resolved path of its base run config."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a study file")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ConfigError(f"study file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file; a study is YAML") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (a study YAML), got {type(raw).__name__}")
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
        cell = Cell(labels, tuple(as_override(k, v) for _, ov in combo for k, v in ov.items()))
        if not any(cell.matches(ex.items()) for ex in spec.exclude):
            cells.append(cell)
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
