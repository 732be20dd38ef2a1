"""Image-caption pairs for training and evaluation: lazy decoding, skip-and-count of bad inputs,
collation with tokenisation, and a resumable deterministic sampler."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from mmtlab.batches import Batch  # noqa: F401  (defined with the other batch types)
from mmtlab.data.tokenizer import TextTokenizer


class HasImageAndCaptions(Protocol):
    path: Path
    captions: list[str]


def centre_crop(width: int, height: int, size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """What `load_image` does to a width x height image: the (width, height) it is resized to
    (shorter side = `size`) and the (left, top) corner of the size x size crop it keeps. Boxes in
    the original pixels are mapped into the crop with the same numbers (diagnostics/ablation.py)."""
    if (width, height) == (size, size):
        return (width, height), (0, 0)
    s = size / min(width, height)
    w, h = max(size, round(width * s)), max(size, round(height * s))
    return (w, h), ((w - size) // 2, (h - size) // 2)


def fit_image(im: Image.Image, size: int) -> Tensor:
    """A PIL image as uint8 [3, size, size]: RGB, shorter side resized to `size`, centre crop."""
    im = im.convert("RGB")
    (w, h), (left, top) = centre_crop(*im.size, size)
    if (w, h) != im.size:
        im = im.resize((w, h), Image.BICUBIC)
    if (w, h) != (size, size):
        im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def load_image(path: str | Path, size: int) -> Tensor:
    """Decode to uint8 [3, size, size] (`fit_image`).

    Raises OSError / ValueError / Image.DecompressionBombError for unreadable files.
    """
    with Image.open(path) as im:
        return fit_image(im, size)


class ImagePreprocess:
    """What a model reads from a picture, exactly as training fed it: `preprocess(image)` with a
    PIL image or a path -> float [3, size, size] in [-1, 1] (stack a batch with torch.stack)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image | str | Path) -> Tensor:
        if isinstance(image, str | Path):
            return to_float(load_image(image, self.size))
        return to_float(fit_image(image, self.size))

    def __repr__(self) -> str:
        return f"ImagePreprocess(size={self.size}: RGB, shorter side to {self.size}, centre crop, [-1, 1])"


def image_size(path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding; (0, 0) when it cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return (0, 0)


def to_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class ImageCache:
    """Decoded images by record index; a file that fails to decode is remembered as bad."""

    load_errors = BAD_IMAGE_ERRORS  # what `_load` raises for a file that cannot be used

    def __init__(self, records: Sequence[HasImageAndCaptions], size: int, keep: bool = True):
        self.records, self.size, self.keep = records, size, keep
        self._images: dict[int, Tensor] = {}
        self.bad: set[int] = set()
        self.errors: list[str] = []  # the first 50 reasons, for messages

    def _load(self, i: int) -> Tensor:
        return load_image(self.records[i].path, self.size)

    def get(self, i: int) -> Tensor | None:
        if i in self._images:
            return self._images[i]
        if i in self.bad:
            return None
        try:
            img = self._load(i)
        except self.load_errors as e:
            self.bad.add(i)
            if len(self.errors) < 50:
                self.errors.append(str(e))
            return None
        if self.keep:
            self._images[i] = img
        return img

    def subset(self, idx: Sequence[int]) -> ImageCache:
        """The same source over records[idx] (their new indices are 0..len(idx)-1)."""
        return ImageCache([self.records[i] for i in idx], self.size, self.keep)

    def stack(self, images: Sequence[Tensor]) -> Tensor:
        """A model-ready batch: float [B, 3, H, W] in [-1, 1]."""
        return to_float(torch.stack(list(images)))


class ImageTextPairs(Dataset):
    """One item per (image, non-empty caption). Empty captions are dropped and counted up front;
    undecodable images yield None and are dropped (and counted) by `PairCollator`."""

    def __init__(
        self,
        records: Sequence[HasImageAndCaptions],
        image_size: int,
        max_pairs: int | None = None,
        images=None,
    ):
        self.records = records
        pairs = [(ri, ci) for ri, r in enumerate(records) for ci, c in enumerate(r.captions) if c and c.strip()]
        self.empty_captions = sum(len(r.captions) for r in records) - len(pairs)
        self.pairs = pairs[:max_pairs] if max_pairs else pairs
        # The image source: decoded pixels by default, or region features (data/regions.py); both
        # give `get(record index)` (None if unusable) and `stack(items)` (a model-ready batch).
        self.images = images if images is not None else ImageCache(records, image_size)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[Tensor | None, str, int]:
        ri, ci = self.pairs[i]
        return self.images.get(ri), self.records[ri].captions[ci], ri

    def captions(self) -> Iterator[str]:
        for ri, ci in self.pairs:
            yield self.records[ri].captions[ci]


class PairCollator:
    def __init__(self, tokenizer: TextTokenizer, stack=None):
        self.tokenizer = tokenizer
        self.stack = stack or (lambda images: to_float(torch.stack(images)))

    def __call__(self, items: list[tuple[Tensor | None, str, int]]) -> Batch:
        good = [it for it in items if it[0] is not None]
        if not good:
            raise RuntimeError("every image in a batch failed to decode; check the dataset's image files")
        tokens, mask = self.tokenizer([c for _, c, _ in good])
        images = self.stack([im for im, _, _ in good])
        index = torch.tensor([ri for _, _, ri in good], dtype=torch.long)
        return Batch(images, tokens, mask, index, skipped=len(items) - len(good))


class ResumableSampler(Sampler[int]):
    """Endless stream of indices, one fresh permutation per epoch, seeded by (seed, epoch).

    `start` is the number of samples already consumed (globally), so a resumed run continues
    exactly where the interrupted one stopped. With `world` > 1 each rank takes every world-th
    index of the global stream, so ranks see disjoint samples.
    """

    def __init__(self, n: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if n == 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.seed, self.start, self.rank, self.world = n, seed, start, rank, world

    def permutation(self, epoch: int) -> Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        pos = self.start + self.rank
        while True:
            epoch, offset = divmod(pos, self.n)
            perm = self.permutation(epoch)
            while offset < self.n:
                yield int(perm[offset])
                offset += self.world
                pos += self.world

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62
