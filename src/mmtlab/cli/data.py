"""`mmtlab data ...`: build emoji-scenes, write interleaved documents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mmtlab.cli import UserError, console, data_app


def _parse_styles(spec: str) -> dict[str, float]:
    styles = {}
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        try:
            styles[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise UserError(f"--styles: {part!r} is not name=weight (e.g. alt_text=0.6,descriptive=0.4)") from None
    return styles


@data_app.command("build")
def data_build(
    name: Annotated[str, typer.Argument(help="dataset to build: emoji-scenes or emoji-video")],
    out: Annotated[Path, typer.Option(help="output directory")] = Path("data/emoji-scenes"),
    size: Annotated[int, typer.Option(help="number of pretraining images (one web-style caption each)")] = 20000,
    seed: Annotated[int, typer.Option(help="generation seed")] = 0,
    image_size: Annotated[int, typer.Option(help="scene size in pixels")] = 64,
    noise: Annotated[float, typer.Option(help="fraction of pretraining captions taken from another image")] = 0.0,
    styles: Annotated[
        str, typer.Option(help="pretraining caption-style mixture (language similarity to the descriptive eval)")
    ] = "alt_text=0.6,descriptive=0.3,narrative=0.1",
    num_sprites: Annotated[int | None, typer.Option(help="restrict the vocabulary to the N most basic sprites")] = None,
    eval_size: Annotated[int, typer.Option(help="images in val and in test (5 descriptive captions each)")] = 1000,
    detection_size: Annotated[
        int, typer.Option(help="also write a detection benchmark at N px into OUT/detection (0: none)")
    ] = 0,
    detection_train: Annotated[int, typer.Option(help="detection: training images (base sprites only)")] = 4000,
    detection_test: Annotated[int, typer.Option(help="detection: test images (val: half as many)")] = 1000,
    num_frames: Annotated[int, typer.Option(help="emoji-video: frames per clip (even, >= 4)")] = 8,
):
    """Build emoji-scenes (images + Karpathy JSON + WebDataset shards + preview.png) or emoji-video
    (H.264 MP4 clips + MSR-VTT JSON + QA + WebVid-style shards; uses --size, --eval-size, --seed,
    --image-size, --num-sprites, --num-frames)."""
    if name == "emoji-video":
        return _build_video(out, size, eval_size, seed, image_size, num_sprites, num_frames)
    if name != "emoji-scenes":
        raise UserError(f"unknown dataset {name!r}; available: emoji-scenes, emoji-video")
    from mmtlab.data.emoji_scenes import build_emoji_scenes

    try:
        summary = build_emoji_scenes(
            out,
            size=size,
            seed=seed,
            image_size=image_size,
            noise=noise,
            pretrain_styles=_parse_styles(styles),
            num_sprites=num_sprites,
            eval_size=eval_size,
        )
    except ValueError as e:  # the builder checks its arguments before writing anything
        raise UserError(str(e).replace("pretrain_styles", "--styles")) from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    console.print(f"[green]emoji-scenes ready[/] in {out}: " + json.dumps(summary.get("counts", summary)))
    if detection_size:
        from mmtlab.data.emoji_scenes.detection import build_detection

        try:
            det = build_detection(out, image_size=detection_size, train=detection_train,
                                  val=max(1, detection_test // 2), test=detection_test)  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from None
        sets = ", ".join(f"{len(v['ids'])} {k}" for k, v in det["sets"].items())
        console.print(f"[green]detection benchmark ready[/] in {out}/detection ({detection_size} px; {sets}): "
                      + json.dumps(det["counts"]))  # fmt: skip


def _build_video(out: Path, size: int, eval_size: int, seed: int, frame_size: int, num_sprites, num_frames):
    from mmtlab.data.emoji_video import build_emoji_video

    if out == Path("data/emoji-scenes"):  # the default names the image build
        out = Path("data/emoji-video")
    try:
        summary = build_emoji_video(out, size=size, eval_size=eval_size, seed=seed, frame_size=frame_size,
                                    num_sprites=num_sprites or 20, num_frames=num_frames)  # fmt: skip
    except ValueError as e:
        raise UserError(str(e).replace("frame_size", "--image-size").replace("num_frames", "--num-frames")) from None
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    console.print(f"[green]emoji-video ready[/] in {out}: " + json.dumps(summary["counts"]))


@data_app.command("interleaved")
def data_interleaved(
    data: Annotated[Path, typer.Option(help="an emoji-scenes build (boxes and labels) or an emoji-video build")],
    out: Annotated[Path, typer.Option(help="directory for the JSONL shards")],
    docs: Annotated[int, typer.Option(help="number of documents")] = 20000,
    max_chunks: Annotated[int, typer.Option(help="image-text chunks per document: 1 to N")] = 8,
    split: Annotated[
        str | None, typer.Option(help="split whose images the documents use (default: pretrain; video: train)")
    ] = None,
    seed: Annotated[int, typer.Option(help="document seed")] = 0,
):
    """Interleaved image-text documents (captioning, VQA and classification chunks) from an
    emoji-scenes build, as OBELICS-like JSONL shards:
    {"images": [path, null, ...], "texts": [null, "output: ...", ...]}.
    From an emoji-video build the media are its .mp4 clips (captioning and qa.json's VQA chunks).

    Flamingo trains on them (data.interleaved), and so does its LM (their text alone)."""
    from mmtlab.data.interleaved import build_interleaved

    if docs < 1 or max_chunks < 1:
        raise UserError(f"--docs and --max-chunks must be at least 1 (got {docs}, {max_chunks})")
    meta = build_interleaved(out, data, docs, max_chunks, split, seed)
    what = "clips" if meta["video"] else "images"
    counts = f"{meta['documents']} documents ({meta['media']} {what}) in {meta['shards']} shards"
    verb = "kept (built before with these parameters)" if meta.get("skipped") else "wrote"
    console.print(f"[green]{verb}[/] {counts} in {out}")
    console.print(f"example: {meta['example']}", highlight=False)
