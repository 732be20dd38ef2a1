"""Build the emoji-scenes dataset on disk, in the same formats real corpora ship in.

    out_dir/
      meta.json                      build parameters, format version, counts, vocabulary, timing
      dataset_emoji_scenes.json      Karpathy format (like dataset_flickr30k.json) + boxes/labels/phrases
      images/{split}/{split}_{index:07d}.png
      shards/{split}-{shard:06d}.tar WebDataset: {key}.png, {key}.txt (first caption), {key}.json
      flickr30k_entities/            the eval splits' phrase grounding in Flickr30k Entities format:
        Sentences/{key}.txt          captions with [/EN#id/category phrase] markup
        Annotations/{key}.xml        VOC-style boxes named by entity id
      preview.png                    a few val scenes with their boxes and first caption

Splits: `pretrain` (one caption per image, style drawn from a mixture: the "language similarity"
knob; a `noise` fraction of captions belongs to another image), `val` and `test` (5 descriptive
captions per image, like Flickr30k test) and `heldout` (every image contains a sprite that never
appears in the other splits, for open-vocabulary tests).

The build is atomic (written to a hidden temp dir, renamed into place at the end) and skipped when
out_dir already holds a complete build with the same parameters. Output bytes depend only on the
parameters, not on the number of worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...io import atomic_replace_dir, atomic_write_json, honour_umask
from ..formats import flickr30k_entities
from ..formats.karpathy import write_karpathy
from ..formats.webdataset import ShardWriter
from .captions import STYLES, caption_scene
from .detection import export_coco, instances_file
from .export import export_flickr30k_entities, write_preview
from .scenes import generate_scene, scene_rng
from .sprites import SpriteAtlas

FORMAT_VERSION = 1
DATASET_NAME = "emoji-scenes"
KARPATHY_FILE = "dataset_emoji_scenes.json"
SPLITS = ("pretrain", "val", "test", "heldout")
EVAL_SPLITS = ("val", "test", "heldout")  # the splits exported with Flickr30k Entities grounding
HELDOUT_FRACTION = 0.1
HELDOUT_SEED = 0  # fixed, so every dataset seed holds out the same sprites (comparable open-vocab tests)
PAIR_STREAM = 2  # scene_rng sub-stream for the pretrain pairing plan
CHUNK = 200  # scenes per worker task
DEFAULT_PRETRAIN_STYLES = {"alt_text": 0.6, "descriptive": 0.3, "narrative": 0.1}


@dataclass(frozen=True)
class _Config:
    seed: int
    image_size: int
    vocab: tuple[int, ...]
    heldout: tuple[int, ...]


def build_emoji_scenes(
    out_dir: str | Path,
    *,
    size: int = 20000,
    seed: int = 0,
    image_size: int = 64,
    noise: float = 0.0,
    pretrain_styles: Mapping[str, float] | None = None,
    num_sprites: int | None = None,
    eval_size: int = 1000,
    heldout_size: int = 500,
    shard_size: int = 2000,
    progress: bool = True,
    workers: int | None = None,
) -> dict:
    """Build (or reuse) the dataset in `out_dir`; returns a summary dict (see meta.json).

    `pretrain_styles` maps caption style -> weight for pretrain captions (default: 60% alt_text, 30%
    descriptive, 10% narrative; the proportions are exact, not sampled). `noise` is the exact fraction of
    pretrain images whose caption is taken from another pretrain image. `num_sprites` restricts the
    non-held-out vocabulary to the N most basic sprites (see SpriteAtlas.basic_order). `workers`
    defaults to min(2, CPU count); it changes speed only, never the output.
    """
    out_dir = Path(out_dir)
    styles = dict(DEFAULT_PRETRAIN_STYLES if pretrain_styles is None else pretrain_styles)
    _validate(size, noise, styles, num_sprites, eval_size, heldout_size, shard_size, image_size)
    atlas = SpriteAtlas.load()
    heldout = tuple(atlas.heldout_ids(HELDOUT_FRACTION, HELDOUT_SEED))
    order = atlas.basic_order(exclude=heldout)
    vocab = tuple(sorted(order[:num_sprites] if num_sprites else order))
    params = {
        "size": size,
        "seed": seed,
        "image_size": image_size,
        "noise": noise,
        "pretrain_styles": {k: float(v) for k, v in sorted(styles.items())},
        "num_sprites": num_sprites,
        "eval_size": eval_size,
        "heldout_size": heldout_size,
        "shard_size": shard_size,
        "heldout_fraction": HELDOUT_FRACTION,
        "heldout_seed": HELDOUT_SEED,
        "atlas_sha256": atlas.digest,
    }
    existing = _existing_build(out_dir, params)
    if existing is not None and not (out_dir / instances_file("test")).exists():  # built before the COCO export
        karpathy = json.loads((out_dir / KARPATHY_FILE).read_text(encoding="utf-8"))["images"]
        export_coco(
            out_dir, [{**e, "labels": e.get("labels") or []} for e in karpathy], atlas, vocab, heldout, image_size
        )
    if existing is not None:
        return {**existing, "out_dir": str(out_dir), "skipped": True}
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "meta.json").exists():
        raise ValueError(f"{out_dir} exists and is not an emoji-scenes build; refusing to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    honour_umask(tmp, directory=True)  # mkdtemp's 0700 would make the dataset owner-only
    started = time.perf_counter()
    try:
        counts = _write_dataset(
            tmp,
            atlas,
            _Config(seed, image_size, vocab, heldout),
            params,
            styles,
            workers or min(2, os.cpu_count() or 1),
            progress,
        )
        meta = {
            "dataset": DATASET_NAME,
            "format_version": FORMAT_VERSION,
            "params": params,
            "counts": counts,
            "vocabulary": {"ids": list(vocab), "names": [atlas.names[i] for i in vocab]},
            "heldout_vocabulary": {"ids": list(heldout), "names": [atlas.names[i] for i in heldout]},
            "files": {
                "karpathy": KARPATHY_FILE,
                "images": "images/{split}/{split}_{index:07d}.png",
                "shards": "shards/{split}-{shard:06d}.tar",
                "preview": "preview.png",
                "flickr30k_entities": flickr30k_entities.EXPORT_DIR,
                "coco": "instances_{split}.json",
            },
            "build_seconds": round(time.perf_counter() - started, 2),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(tmp / "meta.json", meta)  # last file written: its presence marks completion
        atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**_summary(meta), "out_dir": str(out_dir), "skipped": False}


# ------------------------------------------------------------------------------------ parameters


def _validate(
    size: int,
    noise: float,
    styles: dict,
    num_sprites: int | None,
    eval_size: int,
    heldout_size: int,
    shard_size: int,
    image_size: int,
) -> None:
    if size < 0 or eval_size < 0 or heldout_size < 0:
        raise ValueError("size, eval_size and heldout_size must be >= 0")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if noise > 0 and size < 2:
        raise ValueError("noise > 0 needs at least 2 pretrain images")
    unknown = set(styles) - set(STYLES)
    if unknown or not styles or any(w < 0 for w in styles.values()) or sum(styles.values()) <= 0:
        raise ValueError(
            f"pretrain_styles must map some of {', '.join(STYLES)} to non-negative weights "
            f"with a positive sum, got {styles}"
        )
    if num_sprites is not None and num_sprites < 1:
        raise ValueError(f"num_sprites must be >= 1, got {num_sprites}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")


def _existing_build(out_dir: Path, params: dict) -> dict | None:
    try:
        meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = meta.get("format_version") == FORMAT_VERSION and meta.get("params") == json.loads(json.dumps(params))
    return _summary(meta) if same else None


def _summary(meta: dict) -> dict:
    return {
        "counts": meta["counts"],
        "params": meta["params"],
        "build_seconds": meta["build_seconds"],
        "vocabulary_size": len(meta["vocabulary"]["ids"]),
        "heldout_vocabulary_size": len(meta["heldout_vocabulary"]["ids"]),
    }


def _remove_stale_temp_dirs(out_dir: Path) -> None:
    """Temp dirs of killed builds (their pid is gone) would otherwise pile up next to out_dir."""
    for p in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        try:
            pid = int(p.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            pass


def pretrain_plan(seed: int, size: int, styles: Mapping[str, float], noise: float) -> dict[str, np.ndarray]:
    """Which caption style each pretrain image gets, and which images get another image's caption.

    Exact proportions (largest-remainder rounding over a seeded permutation) rather than independent
    draws, so a 10% noise run really has 10% noisy pairs even at small sizes.
    """
    rng = scene_rng(seed, "pretrain", 0, PAIR_STREAM)
    names = [s for s in STYLES if styles.get(s, 0) > 0]
    weights = np.array([styles[s] for s in names], dtype=np.float64)
    quota = weights / weights.sum() * size
    counts = np.floor(quota).astype(int)
    counts[np.argsort(-(quota - counts), kind="stable")[: size - counts.sum()]] += 1
    style_ids = np.repeat([STYLES.index(s) for s in names], counts)[rng.permutation(size)]
    noisy = np.zeros(size, dtype=bool)
    noisy[rng.permutation(size)[: int(round(noise * size))]] = True
    # Another image's caption: a uniformly random different index.
    source = (np.arange(size) + 1 + rng.integers(0, max(size - 1, 1), size=size)) % max(size, 1)
    return {"style": style_ids, "noisy": noisy, "source": np.where(noisy, source, -1)}


# ---------------------------------------------------------------------------------------- workers

_WORKER: dict = {}


def _init_worker(config: _Config, plan: dict[str, np.ndarray]) -> None:
    _WORKER.update(config=config, plan=plan, atlas=SpriteAtlas.load())


def _make_chunk(job: tuple[str, int, int]) -> list[tuple[bytes, dict]]:
    split, start, stop = job
    return [_make_sample(split, i) for i in range(start, stop)]


def _make_sample(split: str, index: int) -> tuple[bytes, dict]:
    cfg: _Config = _WORKER["config"]
    atlas: SpriteAtlas = _WORKER["atlas"]

    def scene_at(i: int):
        required = cfg.heldout if split == "heldout" else ()
        return generate_scene(
            cfg.seed, split, i, image_size=cfg.image_size, vocab=cfg.vocab, required=required, atlas=atlas
        )

    scene = scene_at(index)
    record: dict = {"noisy": False}
    if split == "pretrain":
        plan = _WORKER["plan"]
        style = STYLES[int(plan["style"][index])]
        if plan["noisy"][index]:
            source = int(plan["source"][index])
            captions = caption_scene(scene_at(source), style, n=1, atlas=atlas)
            record.update(noisy=True, caption_source=f"{split}_{source:07d}")
        else:
            captions = caption_scene(scene, style, n=1, atlas=atlas)
    else:
        captions = caption_scene(scene, "descriptive", atlas=atlas)
    buf = io.BytesIO()
    scene.image.save(buf, format="PNG")
    key = f"{split}_{index:07d}"
    record.update(
        {
            "key": key,
            "split": split,
            "index": index,
            "captions": [c.text for c in captions],
            "styles": [c.style for c in captions],
            # The phrases of a borrowed caption point at another image's boxes: keep none.
            "phrases": [[] if record["noisy"] else [p.to_dict() for p in c.phrases] for c in captions],
            "boxes": scene.boxes,
            "labels": scene.labels,
            "background": scene.background.to_dict(),
        }
    )
    return buf.getvalue(), record


def _jobs(split: str, n: int) -> Iterator[tuple[str, int, int]]:
    for start in range(0, n, CHUNK):
        yield split, start, min(n, start + CHUNK)


# ----------------------------------------------------------------------------------------- writer


def _write_dataset(
    root: Path, atlas: SpriteAtlas, cfg: _Config, params: dict, styles: dict, workers: int, show_progress: bool
) -> dict:
    sizes = {
        "pretrain": params["size"],
        "val": params["eval_size"],
        "test": params["eval_size"],
        "heldout": params["heldout_size"],
    }
    plan = pretrain_plan(cfg.seed, params["size"], styles, params["noise"])
    jobs = [job for split in SPLITS for job in _jobs(split, sizes[split])]
    images_meta: list[dict] = []
    counts: dict = {s: {"images": n, "captions": 0, "shards": 0} for s, n in sizes.items()}
    writers = {s: ShardWriter(root / "shards", s, params["shard_size"]) for s in SPLITS}
    for s in SPLITS:
        (root / "images" / s).mkdir(parents=True, exist_ok=True)

    if workers > 1 and len(jobs) > 1:
        pool = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn").Pool(
            workers, initializer=_init_worker, initargs=(cfg, plan)
        )
        results = pool.imap(_make_chunk, jobs)  # ordered: output does not depend on scheduling
    else:
        pool = None
        _init_worker(cfg, plan)
        results = map(_make_chunk, jobs)
    try:
        with _progress(show_progress, sum(sizes.values())) as advance:
            for chunk in results:
                for png, rec in chunk:
                    split, key = rec["split"], rec["key"]
                    (root / "images" / split / f"{key}.png").write_bytes(png)
                    shard_meta = {
                        k: rec[k] for k in ("captions", "styles", "boxes", "labels", "phrases", "noisy", "background")
                    }
                    shard_meta.update(imgid=len(images_meta), split=split, key=key)
                    if rec["noisy"]:
                        shard_meta["caption_source"] = rec["caption_source"]
                    writers[split].write(
                        key, {"png": png, "txt": rec["captions"][0], "json": json.dumps(shard_meta, ensure_ascii=False)}
                    )
                    entry = {
                        "filename": f"{key}.png",
                        "filepath": split,
                        "split": split,
                        **{
                            k: rec[k]
                            for k in ("captions", "styles", "boxes", "labels", "phrases", "noisy", "background")
                        },
                    }
                    if rec["noisy"]:
                        entry["caption_source"] = rec["caption_source"]
                    images_meta.append(entry)
                    counts[split]["captions"] += len(rec["captions"])
                advance(len(chunk), chunk[-1][1]["split"])
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        for w in writers.values():
            w.close()
    for s in SPLITS:
        counts[s]["shards"] = len(writers[s].paths)
    counts["noisy_pretrain"] = int(plan["noisy"].sum())
    write_karpathy(root / KARPATHY_FILE, images_meta, dataset=DATASET_NAME)
    export_coco(root, images_meta, atlas, cfg.vocab, cfg.heldout, cfg.image_size)
    eval_images = [m for m in images_meta if m["split"] in EVAL_SPLITS]
    size = (cfg.image_size, cfg.image_size)
    export_flickr30k_entities(root / flickr30k_entities.EXPORT_DIR, eval_images, atlas.categories, size)
    write_preview(root, atlas, cfg.image_size, [m for m in images_meta if m["split"] == "val"][:12])
    return counts


class _progress:
    """A rich progress bar with rate and ETA, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self):
        if not self.enabled:
            return lambda n, split: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        from ...progress import progress_bar

        class Rate(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"{task.speed:,.0f} scenes/s" if task.speed else "", style="cyan")

        self.bar = progress_bar(
            transient=False,
            columns=(
                TextColumn("emoji-scenes [bold]{task.fields[split]:<8}"),
                BarColumn(),
                MofNCompleteColumn(),
                Rate(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
            ),
        )
        self.bar.start()
        task = self.bar.add_task("build", total=self.total, split="")
        return lambda n, split: self.bar.update(task, advance=n, split=split)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.stop()
