"""Single-modality training data: images only, captions only, spoken captions (self-supervised
objectives such as data2vec need no pairs). Each dataset brings its own collator and the same
small interface the training loop uses for pairs: `len`, `captions()` (for the tokenizer),
`empty_captions`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmtlab.batches import ModalityBatch  # noqa: F401  (defined with the other batch types)
from mmtlab.data.pairs import HasImageAndCaptions, ImageCache, to_float
from mmtlab.data.speech import SpokenSet
from mmtlab.data.tokenizer import TextTokenizer


def _captions(records: Sequence[HasImageAndCaptions]) -> Iterator[str]:
    for r in records:
        yield from (c for c in r.captions if c and c.strip())


class ImagesOnly(Dataset):
    """One item per image of the split; undecodable images are dropped and counted."""

    def __init__(self, records: Sequence[HasImageAndCaptions], image_size: int, max_items: int | None = None):
        self.records = records[:max_items] if max_items else records
        self.images = ImageCache(self.records, image_size)
        self.empty_captions = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Tensor | None:
        return self.images.get(i)

    def captions(self) -> Iterator[str]:
        return _captions(self.records)

    def collator(self, tokenizer: TextTokenizer):
        return collate_images


def collate_images(items: list[Tensor | None]) -> ModalityBatch:
    good = [im for im in items if im is not None]
    if not good:
        raise RuntimeError("every image in a batch failed to decode; check the dataset's image files")
    return ModalityBatch(images=to_float(torch.stack(good)), skipped=len(items) - len(good))


class CaptionsOnly(Dataset):
    """One item per non-empty caption of the split."""

    def __init__(self, records: Sequence[HasImageAndCaptions], max_items: int | None = None):
        texts = [c for r in records for c in r.captions]
        kept = [c for c in texts if c and c.strip()]
        self.empty_captions = len(texts) - len(kept)
        self.texts = kept[:max_items] if max_items else kept

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]

    def captions(self) -> Iterator[str]:
        return iter(self.texts)

    def collator(self, tokenizer: TextTokenizer):
        def collate(items: list[str]) -> ModalityBatch:
            tokens, mask = tokenizer(items)
            return ModalityBatch(tokens=tokens, text_mask=mask)

        return collate


def normalise_wave(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (fairseq's audio_pretraining `normalize: true`)."""
    return (x - x.mean()) / (x.std() + 1e-5)


class SpokenCaptions(Dataset):
    """The caption utterances of a spoken set (the first `max_items`)."""

    def __init__(self, spoken: SpokenSet, max_items: int | None = None, max_seconds: float = 4.0, seed: int = 0):
        utts = spoken.of_kind("caption")
        if max_items is not None and max_items > len(utts):
            raise ValueError(f"data.speech_captions={max_items}, but {spoken.root} holds {len(utts)} spoken captions")
        self.spoken = spoken
        self.utterances = utts[:max_items] if max_items else utts
        self.max_samples = int(max_seconds * spoken.sample_rate)
        self.seed = seed
        self.empty_captions = 0

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        return i, self.spoken.audio(self.utterances[i])

    def captions(self) -> Iterator[str]:
        return (u["text"] for u in self.utterances)

    def collator(self, tokenizer: TextTokenizer):
        return CropCollator(self.max_samples, self.seed)


class CropCollator:
    """Crops every utterance of a batch to the batch's shortest (at most `max_samples`) at a random
    offset, so the batch has no padding -- fairseq's audio pretraining batches (pad: false).
    Offsets are drawn from the items' indices, so a resumed run sees the same crops."""

    def __init__(self, max_samples: int, seed: int = 0):
        self.max_samples, self.seed = max_samples, seed

    def __call__(self, items: list[tuple[int, np.ndarray]]) -> ModalityBatch:
        n = min(self.max_samples, min(len(w) for _, w in items))
        rng = np.random.default_rng([self.seed, *(i for i, _ in items)])
        crops = []
        for _, w in items:
            start = int(rng.integers(0, len(w) - n + 1))
            crops.append(normalise_wave(w[start : start + n]))
        return ModalityBatch(audio=torch.from_numpy(np.stack(crops)).float())


def pad_waves(waves: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """Normalised waveforms, zero-padded to the longest: audio [B, T] and audio_mask [B, T]."""
    n = max(len(w) for w in waves)
    audio = torch.zeros(len(waves), n)
    mask = torch.zeros(len(waves), n, dtype=torch.bool)
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.from_numpy(normalise_wave(w))
        mask[i, : len(w)] = True
    return audio, mask
