"""Spoken emoji-scenes on disk: a manifest plus mu-law audio, and where a run finds it.

A spoken set is a directory:

    manifest.json        {"format_version": 1, "sample_rate": 16000, "codec": "mu-law-8bit+xz",
                          "utterances": [{"id", "kind": "caption"|"keyword", "file", "offset",
                          "samples", "text", "voice", "speed", "pitch", ...}, ...]}
    captions.ulaw.xz     8-bit mu-law samples of every caption utterance, concatenated, xz-compressed
    keywords.ulaw.xz     the same for the keyword utterances

8-bit mu-law (G.711's companding curve) keeps about 38 dB SNR on this speech and, with xz, costs
about 11 KB per second of 16 kHz audio -- a third of 16-bit PCM -- which is what lets a useful set
ship inside the package (src/mmtlab/data/speech/assets, built by tools/render_spoken_captions.py).
A run that asks for more spoken captions than ship renders them once with espeak-ng into
`<data.root>-speech/` (or `data.speech_root`); without espeak-ng it stops with a message saying
how to get it.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmtlab.config import DataConfig

FORMAT_VERSION = 1
SHIPPED = Path(__file__).parent / "assets"
MU = 255.0


class SpokenSetError(FileNotFoundError):
    """A spoken set is missing or malformed (the message names the file)."""


def mulaw_encode(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8 codes (mu = 255)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    return np.round((y + 1) / 2 * 255).astype(np.uint8)


def mulaw_decode(q: np.ndarray) -> np.ndarray:
    y = q.astype(np.float32) / 255 * 2 - 1
    return (np.sign(y) * ((1 + MU) ** np.abs(y) - 1) / MU).astype(np.float32)


class SpokenSet:
    """Utterances of a spoken set; audio decoded on demand from the in-memory mu-law bytes."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            raise SpokenSetError(f"no spoken set at {self.root} (missing manifest.json)") from None
        except json.JSONDecodeError as e:
            raise SpokenSetError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
        if manifest.get("format_version") != FORMAT_VERSION or not isinstance(manifest.get("utterances"), list):
            raise SpokenSetError(f"{path}: not a spoken set manifest (format_version {FORMAT_VERSION} expected)")
        self.manifest = manifest
        self.sample_rate = int(manifest["sample_rate"])
        self.utterances: list[dict] = manifest["utterances"]
        self._codes: dict[str, np.ndarray] = {}

    def of_kind(self, kind: str) -> list[dict]:
        return [u for u in self.utterances if u["kind"] == kind]

    @property
    def n_captions(self) -> int:
        return sum(u["kind"] == "caption" for u in self.utterances)

    def _file(self, name: str) -> np.ndarray:
        if name not in self._codes:
            path = self.root / name
            try:
                self._codes[name] = np.frombuffer(lzma.decompress(path.read_bytes()), dtype=np.uint8)
            except FileNotFoundError:
                raise SpokenSetError(f"{path}: missing (listed in {self.root / 'manifest.json'})") from None
            except lzma.LZMAError as e:
                raise SpokenSetError(f"{path}: corrupt xz data ({e})") from None
        return self._codes[name]

    def audio(self, u: dict) -> np.ndarray:
        """float32 waveform of utterance `u` at `sample_rate`."""
        codes = self._file(u["file"])
        start, n = int(u["offset"]), int(u["samples"])
        if start + n > len(codes):
            raise SpokenSetError(f"{self.root / u['file']}: utterance {u['id']} runs past the end of the file")
        return mulaw_decode(codes[start : start + n])


def write_spoken_set(out: str | Path, groups: dict[str, Sequence[tuple[dict, np.ndarray]]], **meta) -> dict:
    """Write a spoken set atomically: `groups` maps a kind ("captions", "keywords") to
    (utterance metadata, float waveform) pairs. Empty waveforms are skipped and counted."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    utterances, skipped = [], 0
    for group, items in groups.items():
        name = f"{group}.ulaw.xz"
        chunks, offset = [], 0
        for info, wave in items:
            if len(wave) == 0:
                skipped += 1
                continue
            codes = mulaw_encode(wave)
            utterances.append({**info, "file": name, "offset": offset, "samples": len(codes)})
            chunks.append(codes)
            offset += len(codes)
        data = np.concatenate(chunks).tobytes() if chunks else b""
        (tmp / name).write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    manifest = {
        "format_version": FORMAT_VERSION,
        "sample_rate": 16000,
        "codec": "mu-law-8bit+xz",
        **meta,
        "skipped_empty": skipped,
        "utterances": utterances,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, separators=(",", ":")))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return {"utterances": len(utterances), "skipped_empty": skipped}


def captions_for_speech(annotations: str | Path, split: str, n: int, max_words: int = 16) -> list[dict]:
    """The first `n` captions of `split` worth speaking: web-style and descriptive ones of at most
    `max_words` words (narratives run for tens of seconds)."""
    from mmtlab.data.formats.karpathy import read_karpathy

    out = []
    for r in read_karpathy(annotations, split=split):
        styles = r.extra.get("styles") or [None] * len(r.captions)
        for k, (text, style) in enumerate(zip(r.captions, styles)):
            if style == "narrative" or not text.strip() or len(text.split()) > max_words:
                continue
            out.append({"text": text.strip(), "image_id": r.image_id, "caption": k, "style": style})
            if len(out) == n:
                return out
    return out


def build_spoken_set(
    out: str | Path,
    annotations: str | Path,
    *,
    split: str = "pretrain",
    captions: int = 3000,
    keywords: Sequence[str] | None = None,
    seed: int = 0,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Render `captions` spoken captions of `split` and the keyword set (default: render.KEYWORDS)
    into a spoken set at `out`."""
    from mmtlab.data.speech import render

    texts = captions_for_speech(annotations, split, captions)
    if len(texts) < captions:
        raise SpokenSetError(f"{annotations}: {len(texts)} speakable captions in split {split!r}, {captions} asked for")
    cap_utts = render.caption_utterances(texts, seed)
    kw_utts = render.keyword_utterances(render.KEYWORDS if keywords is None else keywords)
    total, done = len(cap_utts) + len(kw_utts), 0
    groups: dict[str, list] = {"captions": [], "keywords": []}
    for group, utts, prefix in (("captions", cap_utts, "cap"), ("keywords", kw_utts, "kw")):
        for i, (u, wave) in enumerate(zip(utts, render.render_all(utts, workers))):
            kind = "caption" if group == "captions" else "keyword"
            info = {"id": f"{prefix}_{i:06d}", "kind": kind, "text": u.text, "voice": u.voice}
            groups[group].append(({**info, "speed": u.speed, "pitch": u.pitch, **dict(u.meta)}, wave))
            done += 1
            if progress:
                progress(done, total)
    source = {"annotations": Path(annotations).name, "split": split, "seed": seed}
    return write_spoken_set(out, groups, espeak_ng=render.espeak_version(), source=source)


def default_speech_root(data: DataConfig) -> Path:
    root = Path(data.root)
    return root.parent / f"{root.name}-speech"


def load_spoken(data: DataConfig, captions: int | None = None, *, console=None) -> SpokenSet:
    """The spoken set a run uses: `data.speech_root` if set, else the shipped set when it holds
    `captions` spoken captions, else `<data.root>-speech/`, rendered there on first use."""
    from mmtlab.data.sources import annotation_file
    from mmtlab.data.speech.render import EspeakMissing, espeak_path

    if data.speech_root is None:
        shipped = SpokenSet(SHIPPED)
        if captions is None or captions <= shipped.n_captions:
            return shipped
        root = default_speech_root(data)
    else:
        root = Path(data.speech_root)
    if (root / "manifest.json").exists():
        found = SpokenSet(root)
        if captions is None or found.n_captions >= captions:
            return found
    wanted = captions or 3000
    if espeak_path() is None:
        raise EspeakMissing(
            f"data.speech_captions={wanted}: more spoken captions than the {SpokenSet(SHIPPED).n_captions} that ship "
            f"with mmtlab, and rendering them needs espeak-ng, which is not installed. Install it "
            f"(`sudo apt-get install espeak-ng`, or `python tools/render_spoken_captions.py --out {root} "
            f"--captions {wanted}`, which installs it) or set data.speech_captions <= "
            f"{SpokenSet(SHIPPED).n_captions} to use the shipped set."
        )
    from mmtlab.progress import progress_bar, stderr

    console = console or stderr
    console.print(f"rendering {wanted} spoken captions with espeak-ng into {root} (once; a few minutes)")
    with progress_bar(console) as bar:
        task = bar.add_task("espeak-ng", total=None)
        build_spoken_set(
            root,
            annotation_file(data),
            split=data.train_split,
            captions=wanted,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    return SpokenSet(root)
