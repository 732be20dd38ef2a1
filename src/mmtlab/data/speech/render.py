"""Render spoken emoji-scenes with Debian's espeak-ng: captions for self-supervised speech
pretraining and short keyword utterances (sprite names in several voices, speeds and pitches) for
the keyword-spotting probe. Output: 16 kHz mono float32, silence trimmed.

espeak-ng speaks at 22,050 Hz; we resample by FFT (exact band-limited resampling of a finite
clip), so no audio library is needed.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
# Four accents, each with a different espeak-ng voice variant (male/female formant sets).
VOICES = ("en-us+m3", "en-gb+f3", "en-gb-scotland+m1", "en-029+f4")
KEYWORD_SPEEDS = (140, 185)  # words per minute (espeak-ng -s; default 175)
KEYWORD_PITCHES = (35, 65)  # 0-99 (espeak-ng -p; default 50)
# Sprite names (CLDR short names of emoji-scenes sprites): short, common, mostly distinct words.
KEYWORDS = (
    "cat", "dog", "horse", "fish", "snake", "penguin", "banana", "lemon", "pizza", "bicycle",
    "rocket", "house", "guitar", "umbrella", "elephant", "rabbit", "frog", "tiger", "whale", "violin",
)  # fmt: skip


class EspeakMissing(FileNotFoundError):
    """espeak-ng is needed to render speech that is not shipped."""


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def espeak_version() -> str:
    exe = espeak_path()
    if exe is None:
        raise EspeakMissing("espeak-ng is not installed")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    return out.split(":")[0].replace("eSpeak NG text-to-speech", "").strip() or out.strip()


def _wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """PCM16 mono samples and rate of espeak-ng's --stdout WAV (its header sizes are placeholders)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not return a WAV stream")
    rate = int.from_bytes(data[24:28], "little")
    start = data.index(b"data", 12) + 8
    pcm = data[start:]
    return np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0, rate


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling of a whole clip via its spectrum."""
    if src == dst or len(x) == 0:
        return x.astype(np.float32)
    n_out = int(round(len(x) * dst / src))
    spec = np.fft.rfft(x)
    keep = min(len(spec), n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    out[:keep] = spec[:keep]
    return (np.fft.irfft(out, n_out) * (n_out / len(x))).astype(np.float32)


def trim(x: np.ndarray, threshold: float = 0.01, margin: int = 800) -> np.ndarray:
    """Cut leading and trailing silence, keeping `margin` samples (50 ms) on each side."""
    loud = np.flatnonzero(np.abs(x) > threshold)
    if len(loud) == 0:
        return x
    return x[max(0, loud[0] - margin) : loud[-1] + margin]


def synthesize(text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    """One utterance: float32 at 16 kHz, silence trimmed, peak at 0.9."""
    exe = espeak_path()
    if exe is None:
        raise EspeakMissing("espeak-ng is not installed")
    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"]
    proc = subprocess.run(cmd, input=text.encode(), capture_output=True, check=True)
    x, rate = _wav_samples(proc.stdout)
    x = trim(resample(x, rate, SAMPLE_RATE))
    peak = float(np.abs(x).max()) if len(x) else 0.0
    return x * (0.9 / peak) if peak > 0 else x


@dataclass(frozen=True)
class Utterance:
    """What to say and how; `meta` is copied into the manifest (caption id, style, keyword...)."""

    text: str
    voice: str
    speed: int
    pitch: int
    meta: tuple[tuple[str, object], ...] = ()


def caption_utterances(captions: Sequence[dict], seed: int = 0) -> list[Utterance]:
    """One utterance per caption with a voice, speed and pitch drawn from (seed, caption index)."""
    out = []
    for i, c in enumerate(captions):
        rng = random.Random(seed * 1_000_003 + i)
        out.append(
            Utterance(
                c["text"],
                rng.choice(VOICES),
                rng.randint(140, 190),
                rng.randint(35, 65),
                tuple(sorted(c.items())),
            )
        )
    return out


def keyword_utterances(keywords: Sequence[str] = KEYWORDS) -> list[Utterance]:
    """Every keyword in every voice x speed x pitch (4 x 2 x 2 = 16 renditions each)."""
    out = []
    for label, word in enumerate(keywords):
        for voice in VOICES:
            for speed in KEYWORD_SPEEDS:
                for pitch in KEYWORD_PITCHES:
                    out.append(Utterance(word, voice, speed, pitch, (("keyword", word), ("label", label))))
    return out


def render_all(utterances: Sequence[Utterance], workers: int = 2) -> Iterator[np.ndarray]:
    """Synthesize in order, `workers` espeak-ng processes at a time."""
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(lambda u: synthesize(u.text, u.voice, u.speed, u.pitch), utterances)
