"""`mmtlab import hf-clip|hf-bert|hf-vit|hf-vilt DIR --out RUN` and `mmtlab export RUN --format hf-clip DIR`.

An import writes a run directory (config.yaml, tokenizer.json, checkpoints/step_00000000), so
every evaluation, `mmtlab.load` and `train.init_from` work on a published CLIP as on our runs. An
export writes what transformers' `CLIPModel.from_pretrained` and the CLIP processor read, with a
model card (README.md) of the run's config, data and evaluation results."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from safetensors.torch import save_file

from mmtlab.cli import UserError, app, console
from mmtlab.config import ConfigError, RunConfig, dump_config, format_validation_error, resolve
from mmtlab.io import atomic_write_json, atomic_write_text

import_app = typer.Typer(help="Import published checkpoints (local Hugging Face directories) as runs.")
app.add_typer(import_app, name="import")


def _fresh(out: Path, what: str) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{what} {out} exists and is not empty; give a new directory")


def import_clip(src: Path, out: Path) -> RunConfig:
    """A run directory at `out` holding the CLIPModel of `src`; returns its resolved config."""
    from mmtlab.data.tokenizer import load_tokenizer
    from mmtlab.models import build_model
    from mmtlab.models.hf_clip import HFError, model_fields, weights

    fields = model_fields(src)
    tok_file = src / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"hf-clip: {tok_file} is missing; a fast tokenizer's save_pretrained writes it")
    tok = load_tokenizer(tok_file, fields["text"]["max_len"])
    if tok.vocab_size != fields["text"]["vocab_size"]:
        raise HFError(
            f"hf-clip: {tok_file} has {tok.vocab_size} tokens but the model's vocab_size is "
            f"{fields['text']['vocab_size']}"
        )
    cfg = _run_config(src, "hf-clip", fields, {"contrastive": 1.0}, tok)
    model = build_model(cfg)
    try:
        model.load_state_dict(weights(src, cfg.model), strict=True)
    except RuntimeError as e:
        raise HFError(f"hf-clip: {src} does not fit the model: {' '.join(str(e).split())[:300]}") from None
    _write_run(out, cfg, model, tok_file.read_text(), {"format": "hf-clip", "source": str(src.resolve())})
    return cfg


def _run_config(src: Path, fmt: str, fields: dict, objectives: dict, tok) -> RunConfig:
    try:
        cfg = RunConfig.model_validate({"model": fields, "objectives": objectives})
    except ValidationError as e:
        raise ConfigError(f"{fmt}: {src} does not fit a run config: {format_validation_error(e)}") from None
    cfg = resolve(cfg, tokenizer=tok)
    cfg.tokenizer.path = None
    return cfg


def _write_run(out: Path, cfg: RunConfig, model, tokenizer_json: str, imported: dict) -> None:
    """config.yaml, tokenizer.json, checkpoints/step_00000000 and imported.json (what came from where)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "tokenizer.json", tokenizer_json)
    atomic_write_text(out / "config.yaml", dump_config(cfg))
    tmp = out / "checkpoints" / ".tmp_step_00000000"
    tmp.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    os.replace(tmp, out / "checkpoints" / "step_00000000")
    atomic_write_json(out / "imported.json", imported)


@import_app.command("hf-clip")
def import_hf_clip(
    src: Annotated[Path, typer.Argument(help="a CLIPModel's save_pretrained directory (safetensors)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
):
    """A local Hugging Face CLIPModel as a run directory (dual encoder; same embeddings)."""
    _fresh(out, "--out")
    cfg = import_clip(src, out)
    m = cfg.model
    console.print(
        f"imported {src} as {out}: width {m.width}, depth {m.depth}, {m.image.size}px/{m.image.patch}, "
        f"text {m.text.max_len} tokens; evaluate with `mmtlab eval retrieval {out}`",
        highlight=False,
    )


def hf_tokenizer(path: Path, max_len: int, fmt: str):
    """A BERT-style tokenizer from a tokenizer.json, a vocab.txt or a directory holding either
    (tokenizer.json first); returns it and the tokenizer.json text the run keeps."""
    from mmtlab.data.tokenizer import TextTokenizer, load_tokenizer, wordpiece_from_vocab

    if path.is_dir():
        path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{fmt}: no tokenizer at {path} (a tokenizer.json or BERT's vocab.txt)")
    if path.suffix == ".json":
        tok = load_tokenizer(path, max_len)
    else:
        settings = path.parent / "tokenizer_config.json"
        try:
            lower = json.loads(settings.read_text()).get("do_lower_case", True) if settings.is_file() else True
            tok = TextTokenizer(wordpiece_from_vocab(path, lowercase=bool(lower)), max_len)
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise UserError(f"{fmt}: {path}: {' '.join(str(e).split())[:200]}") from None
    return tok, tok.tok.to_str(pretty=True)


def import_encoder(fmt_name: str, src: Path, out: Path, layout: str | None, tokenizer: Path | None) -> RunConfig:
    """A run directory at `out` holding the BERT / ViT / ViLT model of `src` (models/hf_encoders.py);
    imported.json lists the tensors that came from it (what `train.init_from` copies)."""
    from mmtlab.models import build_model
    from mmtlab.models.hf_clip import HFError
    from mmtlab.models.hf_encoders import FORMATS, model_fields, weights

    fmt = FORMATS[fmt_name]
    fields = model_fields(src, fmt, layout)
    if tokenizer is None and fmt.stream == "image":
        raise UserError(
            f"{fmt_name}: a ViT has no vocabulary; give the run's with --tokenizer (tokenizer.json or vocab.txt)"
        )
    tok, tok_json = hf_tokenizer(tokenizer or src, fields["text"].get("max_len", 32), fmt_name)
    vocab = fields["text"].get("vocab_size")
    if vocab is not None and tok.vocab_size != vocab:
        raise HFError(f"{fmt_name}: the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {vocab}")
    objectives = {"contrastive": 1.0, "itm": 1.0} if fmt.stream == "image" else {"mlm": 1.0, "itm": 1.0}
    cfg = _run_config(src, fmt_name, fields, objectives, tok)
    model = build_model(cfg)
    state = weights(src, fmt, cfg.model, model.layout)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise HFError(f"{fmt_name}: {src} does not fit the model: {' '.join(str(e).split())[:300]}") from None
    if unexpected:  # weights() names only tensors of the model it was given
        raise HFError(f"{fmt_name}: tensors {unexpected[:4]} are not this model's")
    imported = {"format": fmt_name, "source": str(src.resolve()), "tensors": sorted(state)}
    _write_run(out, cfg, model, tok_json, imported)
    return cfg


TokenizerPath = Annotated[Path | None, typer.Option(help="tokenizer.json, vocab.txt or a directory with one")]


def _import_command(fmt: str, src: Path, out: Path, layout: str | None, tokenizer: Path | None) -> None:
    _fresh(out, "--out")
    cfg = import_encoder(fmt, src, out, layout, tokenizer)
    m = cfg.model
    console.print(
        f"imported {src} as {out}: layout {m.layout}, width {m.width}, depth {m.depth}; start a run from it with "
        f"train.init_from={out} and its model section",
        highlight=False,
    )


@import_app.command("hf-bert")
def import_hf_bert(
    src: Annotated[Path, typer.Argument(help="a BertModel's save_pretrained directory (safetensors, vocab.txt)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    layout: Annotated[
        str | None, typer.Option(help="merged (default), modality_specific, asym_text_queries or asym_image_queries")
    ] = None,
    tokenizer: TokenizerPath = None,
):
    """A local BertModel as a run: its layers are the text stream's (layout merged: every layer's
    shared weights; modality_specific: a dual encoder's text tower)."""
    _import_command("hf-bert", src, out, layout, tokenizer)


@import_app.command("hf-vit")
def import_hf_vit(
    src: Annotated[Path, typer.Argument(help="a ViTModel's save_pretrained directory (safetensors)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    tokenizer: Annotated[Path | None, typer.Option(help="the vocabulary of the run's (random) text side")] = None,
    layout: Annotated[
        str | None, typer.Option(help="modality_specific (default), merged, asym_text_queries or asym_image_queries")
    ] = None,
):
    """A local ViTModel as a run: its layers are the image stream's (default: a dual encoder's image tower)."""
    _import_command("hf-vit", src, out, layout, tokenizer)


@import_app.command("hf-vilt")
def import_hf_vilt(
    src: Annotated[Path, typer.Argument(help="a ViltModel's save_pretrained directory (safetensors, vocab.txt)")],
    out: Annotated[Path, typer.Option(help="run directory to write")],
    tokenizer: TokenizerPath = None,
):
    """A local ViltModel as a run: a single-stream (merged) encoder over text tokens and patches."""
    _import_command("hf-vilt", src, out, None, tokenizer)


def _metrics(run: Path) -> list[tuple[str, str, str]]:
    rows = []
    for f in sorted((run / "eval").glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        stack = [("", data)]
        while stack:
            prefix, d = stack.pop(0)
            if isinstance(d, dict):
                stack += [(f"{prefix}{k}.", v) for k, v in d.items()]
            elif isinstance(d, int | float) and not isinstance(d, bool):
                rows.append((f.stem, prefix.rstrip("."), f"{d:.4g}"))
    return rows


def model_card(run: Path, cfg: RunConfig, dropped: list[str]) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        "tags: [clip, mmtlab]",
        "---",
        f"# {run.name}",
        "",
        f"A CLIP dual encoder exported by mmtlab from the run directory `{run.name}` "
        "(`mmtlab export RUN --format hf-clip DIR`). It loads with `CLIPModel.from_pretrained(DIR)`; "
        "images are normalised to [-1, 1] (preprocessor_config.json: mean = std = 0.5).",
        "",
        "## Model",
        "",
        f"- width {m.width}, depth {m.depth} per tower, {m.heads} heads, MLP ratio {m.mlp_ratio:g}, "
        f"activation {m.gelu} GELU, joint embedding {m.embed_dim}",
        f"- images {m.image.size} px in {m.image.patch} px patches; text up to {m.text.max_len} tokens, "
        f"vocabulary {m.text.vocab_size}",
    ]
    if dropped:
        lines.append(f"- not exported (CLIP has no such heads): {', '.join(dropped)}")
    imported = run / "imported.json"
    source = json.loads(imported.read_text()).get("source") if imported.exists() else None
    lines += ["", "## Data and training", ""]
    if source:
        lines.append(f"- imported from {source} (not trained by mmtlab)")
    else:
        lines += [
            f"- data: `{d.root}` ({d.format}), split `{d.train_split}`"
            + (f", first {d.max_train_pairs} pairs" if d.max_train_pairs else ""),
            f"- objectives: {', '.join(f'{k} ({v.weight:g})' for k, v in cfg.objectives.items())}",
            f"- {t.steps} steps of batch {t.batch_size} x {t.grad_accum}, lr {t.lr:g}, seed {cfg.seed}",
        ]
    lines += ["", "## Evaluation", ""]
    rows = _metrics(run)
    if rows:
        lines += ["| evaluation | metric | value |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    else:
        lines.append(f"No evaluations in {run.name}/eval yet (`mmtlab eval retrieval RUN`).")
    model_yaml = yaml.safe_dump(cfg.model.model_dump(mode="json"), sort_keys=False)
    lines += ["", "## Config", "", "```yaml", f"model:\n{_indent(model_yaml)}```", ""]
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "".join(f"  {line}\n" for line in text.splitlines())


def export_clip(run: Path, out: Path) -> None:
    from mmtlab.api import load
    from mmtlab.models.hf_clip import export_problems, hf_config, preprocessor_config, to_hf
    from mmtlab.models.model import MultimodalTransformer

    model = load(run)
    cfg: RunConfig = model.run_config
    if not isinstance(model, MultimodalTransformer):
        raise UserError(f"cannot export {run} as hf-clip: model.arch {cfg.model.arch} is not a dual encoder")
    problems = export_problems(cfg.model, model.layout)
    if problems:
        raise UserError(f"cannot export {run} as hf-clip: {'; '.join(problems)}")
    state = to_hf(model.state_dict(), cfg.model)
    dropped = [h for h in cfg.model.outputs or [] if h != "contrastive"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", hf_config(cfg.model))
    atomic_write_json(out / "preprocessor_config.json", preprocessor_config(cfg.model))
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(run / "tokenizer.json", out / "tokenizer.json")
    tok = model.tokenizer
    token = tok.tok.id_to_token
    atomic_write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.model.text.max_len,
            "pad_token": token(tok.pad_id),
            "bos_token": token(tok.cls_id),
            "eos_token": token(tok.sep_id),
            "unk_token": token(tok.unk_id),
        },
    )
    atomic_write_text(out / "README.md", model_card(run, cfg, dropped))


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="run directory (its latest checkpoint is exported)")],
    out: Annotated[Path, typer.Argument(help="directory to write")],
    format: Annotated[str, typer.Option("--format", help="hf-clip: a transformers CLIPModel")] = "hf-clip",
):
    """A trained dual encoder as a Hugging Face CLIPModel directory with a model card."""
    if format != "hf-clip":
        raise UserError(f"--format {format!r}: the only export format is hf-clip")
    _fresh(out, "output directory")
    export_clip(run, out)
    console.print(f"exported {run} to {out} (CLIPModel.from_pretrained({str(out)!r}))", highlight=False)
