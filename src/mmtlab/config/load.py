"""Reading run configs: YAML files, model bases (configs/models/), `--set a.b=c` overrides and
one-line errors that name the field. `load_config` = read -> validate (config/schema.py) ->
resolve (config/resolve.py)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from mmtlab.config.base import ConfigError
from mmtlab.config.resolve import resolve
from mmtlab.config.schema import RunConfig

CONFIG_DIR = Path(__file__).parent.parent / "configs"


def _model_file(name) -> Path:
    if not isinstance(name, str):
        raise ConfigError(f"model.base: expected a model config name or a .yaml path, got {name!r}")
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    p = CONFIG_DIR / "models" / f"{name}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in (CONFIG_DIR / "models").glob("*.yaml"))
        raise ConfigError(f"model: unknown model config {name!r}; known: {', '.join(known)} (or a path to a .yaml)")
    return p


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error (YAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (line {key_node.start_mark.line + 1})", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_yaml(text: str, where: str):
    """YAML text -> Python objects (safe types only; duplicate keys are errors)."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(e).split())}") from None


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file; a config is YAML") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file; a config is YAML")
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; a run config needs at least a model or objectives")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _merge_model_base(raw: dict) -> dict:
    model = raw.get("model")
    if isinstance(model, str):
        model = {"base": model}
    if isinstance(model, dict) and "base" in model:
        base = _read_yaml(_model_file(model["base"]))
        model = _deep_merge(base, {k: v for k, v in model.items() if k != "base"})
    if model is not None:
        raw = {**raw, "model": model}
    return raw


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; values are parsed as YAML (numbers, lists, null...).
    `objectives.NAME=null` removes that objective."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.lr=3e-4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            if node.get(p) is None:
                node[p] = {}  # a section the file leaves out, or sets to null
            if not isinstance(node[p], dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section (it is {node[p]!r})")
            node = node[p]
        if not all(parts):
            raise ConfigError(f"--set {item!r}: empty field name in {key!r}")
        value = parse_yaml(value, f"--set {key}")
        if value is None and parts[:-1] == ["objectives"]:
            node.pop(parts[-1], None)  # `objectives.itm=null` drops an objective (a study cell swapping one)
        else:
            node[parts[-1]] = value
    return raw


def _fields_at(loc: tuple) -> list[str] | None:
    """Field names allowed at the parent of `loc`, for 'unknown field' errors."""
    model: Any = RunConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            continue
        return None
    return list(getattr(model, "model_fields", {}))


def format_validation_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "config"
        if err["type"] == "extra_forbidden":
            allowed = _fields_at(loc)
            hint = f"; allowed: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{where}: unknown field{hint}")
        elif err["type"] == "value_error" and isinstance(err.get("input"), dict):
            # a check across fields: its message names them (no "Value error," and no input dump)
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            lines.append(msg if not loc else f"{where}: {msg}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{where}: {err['msg']}{got_s}")
    return "; ".join(lines)


def load_config(source: str | Path | dict, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config from a YAML path or dict, apply dotted overrides, validate."""
    raw = _read_yaml(Path(source)) if isinstance(source, str | Path) else copy.deepcopy(source)
    for section in ("data", "tokenizer", "model", "objectives", "train", "eval"):
        if section in raw and raw[section] is None:
            raise ConfigError(f"{section}: empty section (null); give its fields, or delete the line for the defaults")
    raw = _merge_model_base(raw)
    raw = apply_overrides(raw, overrides or [])
    raw = _merge_model_base(raw)  # an override may have named a new base model
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None
    return resolve(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
