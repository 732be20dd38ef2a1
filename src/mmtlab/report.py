"""A run's report: what was trained, how training went (plot), and its evaluation tables, as
report.md and as one self-contained report.html (pictures embedded) to open in a browser."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from mmtlab.eval.runs import retrieval_file  # noqa: E402
from mmtlab.io import atomic_write_text  # noqa: E402

RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(metrics: list[dict], out: Path, val_images: int | None = None) -> Path | None:
    rows = [m for m in metrics if "loss" in m]
    if not rows:
        return None
    val = [m for m in metrics if "val/t2i_r1" in m or "val/bits_per_token_with_image" in m]
    fig, axes = plt.subplots(1, 2 if val else 1, figsize=(10 if val else 5, 3.4), squeeze=False)
    ax = axes[0][0]
    steps = [m["step"] for m in rows]
    ax.plot(steps, [m["loss"] for m in rows], label="total", lw=1.5)
    for key in sorted({k for m in rows for k in m if k.startswith("loss/")}):
        if len({k for m in rows for k in m if k.startswith("loss/")}) > 1:
            ax.plot(steps, [m.get(key) for m in rows], label=key[5:], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if val:
        ax = axes[0][1]
        vs = [m["step"] for m in val]
        if "val/t2i_r1" in val[0]:
            for key in ("val/t2i_r1", "val/i2t_r1", "val/t2i_r5"):
                ax.plot(vs, [m[key] for m in val], marker="o", label=key[4:])
            ax.set_ylabel("validation recall (%)")
        else:
            ax.plot(vs, [m["val/bits_per_token_with_image"] for m in val], marker="o", label="with image")
            ax.plot(vs, [m["val/bits_per_token_without_image"] for m in val], marker="o", label="without image")
            ax.set_ylabel("masked-token loss (bits)")
        if val_images:
            ax.set_title(f"validation: the first {val_images} images of the val split", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def retrieval_table(r: dict) -> str:
    head = "| | " + " | ".join(RETRIEVAL_KEYS) + " |\n|---|" + "---:|" * len(RETRIEVAL_KEYS) + "\n"
    model = "| model | " + " | ".join(f"{r[k]:.1f}" for k in RETRIEVAL_KEYS) + " |\n"
    chance = "| chance | " + " | ".join(f"{r['chance'][k]:.2f}" for k in RETRIEVAL_KEYS) + " |\n"
    return head + model + chance


def write_run_report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = read_metrics(run_dir)
    start = next((m for m in metrics if m.get("event") == "start"), {})
    last = next((m for m in reversed(metrics) if "loss" in m), {})
    lines = [f"# mmtlab run: `{run_dir.name}`", ""]
    m = cfg["model"]
    lines += [
        f"- layout **{m['layout']}**, depth {m['depth']}, width {m['width']}, heads {m['heads']}, "
        f"{start.get('params', 0) / 1e6:.2f} M parameters, outputs {m.get('outputs')}",
        (
            f"- image: {cfg['data'].get('regions', {}).get('num_regions', '?')} toy-detector regions + [IMG]"
            if m["image"].get("input") == "regions"
            else f"- image {m['image']['size']} px, patch {m['image']['patch']}"
        )
        + f"; text max {m['text']['max_len']} tokens, "
        f"vocabulary {m['text']['vocab_size']}",
        "- objectives: " + ", ".join(f"{k} x{v['weight']}" for k, v in cfg["objectives"].items()),
        f"- trained {last.get('step', 0)} steps x {cfg['train']['batch_size'] * cfg['train']['grad_accum']} pairs "
        f"on `{cfg['data']['train_split']}` of `{cfg['data']['root']}`; "
        f"final loss {last.get('loss', float('nan')):.3f}; "
        f"{last.get('pairs_per_s', 0):.0f} pairs/s; skipped images {last.get('skipped_images', 0)}, "
        f"empty captions {start.get('empty_captions', 0)}",
        "",
    ]
    plot = plot_training(metrics, run_dir / "training.png", cfg["train"].get("eval_max_images"))
    if plot:
        lines += ["## Training", "", "![training curves](training.png)", ""]
    retrieval = run_dir / "eval" / retrieval_file()
    if retrieval.exists():
        r = json.loads(retrieval.read_text())
        lines += [
            f"## Zero-shot retrieval on `{r.get('split', '?')}` ({r['n_images']} images, {r['n_texts']} captions)",
            "",
            retrieval_table(r),
        ]
        if (run_dir / "eval" / "retrieval_examples.png").exists():
            lines += ["", "![retrieval examples](eval/retrieval_examples.png)", ""]
    for mode, what in (("cross", "cross-encoder, every pair"), ("rerank", "cross-encoder reranking a shortlist")):
        path = run_dir / "eval" / retrieval_file(mode)
        if path.exists():
            r = json.loads(path.read_text())
            lines += [
                f"## Zero-shot retrieval, {what}, on `{r.get('split', '?')}` ({r['n_images']} images, "
                f"{r['n_texts']} captions, {r['pairs_scored']:,} pairs scored)",
                "",
                retrieval_table(r),
            ]
            if mode == "rerank":
                c = r["shortlist_ceiling"]
                lines += [
                    f"Shortlist of {r['k']} per query; recall ceiling i2t {c['i2t']:.1f}%, t2i {c['t2i']:.1f}%.",
                    "",
                ]
    mlm = run_dir / "eval" / "mlm.json"
    if mlm.exists():
        r = json.loads(mlm.read_text())
        lines += [
            f"## Masked-token loss on `{r.get('split', '?')}` captions ({r['n_masked_tokens']} masked tokens)",
            "",
            "| with image | without image | image gain |",
            "|---:|---:|---:|",
            f"| {r['bits_per_token_with_image']:.3f} bits | {r['bits_per_token_without_image']:.3f} bits "
            f"| {r['image_gain_bits']:.3f} bits |",
            "",
        ]
    caption = run_dir / "eval" / "caption.json"
    if caption.exists():
        r = json.loads(caption.read_text())
        lines += [
            f"## Captioning on `{r.get('split', '?')}` ({r['n_images']} images, {r['method']} decoding)",
            "",
            "| BLEU-1 | BLEU-4 | CIDEr | mean length (words) |",
            "|---:|---:|---:|---:|",
            f"| {r['bleu1']:.1f} | {r['bleu4']:.1f} | {r['cider']:.1f} | {r['mean_length_words']:.1f} |",
            "",
            *(f"- *{ex['caption']}* (reference: {ex['references'][0]})" for ex in r["examples"][:5]),
            "",
        ]
    vqa = run_dir / "eval" / "vqa.json"
    if vqa.exists():
        r = json.loads(vqa.read_text())
        types = list(r["n_by_type"])
        lines += [
            f"## VQA on `{r.get('split', '?')}` ({r['n_questions']} questions, exact match %)",
            "",
            "| | all | " + " | ".join(types) + " |",
            "|---|---:|" + "---:|" * len(types),
            f"| model | {r['accuracy']:.1f} | " + " | ".join(f"{r[f'{t}_accuracy']:.1f}" for t in types) + " |",
            "| majority answer | | " + " | ".join(f"{r['majority_answer'][t]:.1f}" for t in types) + " |",
            "",
        ]
    out = run_dir / "report.md"
    text = "\n".join(lines) + "\n"
    atomic_write_text(out, text)
    atomic_write_text(run_dir / "report.html", markdown_to_html(text, run_dir, f"mmtlab run {run_dir.name}"))
    return out


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """The report's Markdown (headings, lists, tables, images, paragraphs) as one HTML page with
    the images embedded, so the file alone can be sent or served."""
    out, table, items = [], [], []

    def flush() -> None:
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()
        if table:
            rows = [
                [c.strip() for c in r.strip().strip("|").split("|")] for r in table if not re.match(r"^\|[-:| ]+$", r)
            ]
            head, *body = rows
            out.append('<div class="scroll"><table><tr>' + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</table></div>")  # fmt: skip
            table.clear()

    for line in md.splitlines():
        image = re.match(r"^!\[([^]]*)\]\(([^)]+)\)$", line.strip())
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif image:
            path = base / image.group(2)
            if path.exists():
                data = base64.b64encode(path.read_bytes()).decode()
                out.append(f'<p><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}"
             ".scroll{overflow-x:auto} table{border-collapse:collapse;font-size:14px} img{max-width:100%}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}"
             "td:first-child,th:first-child{text-align:left} code{background:#f3f3f3;padding:0 3px}")  # fmt: skip
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")  # fmt: skip
