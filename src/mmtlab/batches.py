"""The batch types that flow from the data pipeline to models and objectives. Dependency-free (torch
only), so models and objectives read batches without importing the data package (PIL, detector).

Every batch has `len`, `.to(device)`, `skipped` (items dropped because a file did not decode) and
`loss_weight` (its dataset's weight in a mixture); the text-bearing ones have `tokens`,
`text_mask` and `target_mask` (the tokens a generative loss predicts; None: every real token).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

# The 5-d geometry (x1/W, y1/H, x2/W, y2/H, area/WH) of a box covering the whole image: the global
# [IMG] region of VOLTA-style models.
WHOLE_IMAGE_GEOMETRY = (0.0, 0.0, 1.0, 1.0, 1.0)


@dataclass
class Batch:
    images: Tensor  # float [B, 3, H, W] in [-1, 1], or a data.regions.Regions batch
    tokens: Tensor  # long [B, L]
    text_mask: Tensor  # bool [B, L], True = real token
    image_index: Tensor  # long [B], record index of each pair's image
    skipped: int = 0  # pairs dropped because their image could not be decoded
    damaged_shards: int = 0  # streamed data: truncated or unreadable shards met since the previous batch
    target_mask: Tensor | None = None  # bool [B, L]: tokens a generative loss predicts (None: all real ones)
    loss_weight: float = 1.0  # the dataset's weight in a mixture

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=True),
            self.tokens.to(device, non_blocking=True),
            self.text_mask.to(device, non_blocking=True),
            self.image_index.to(device, non_blocking=True),
            self.skipped,
            self.damaged_shards,
            None if self.target_mask is None else self.target_mask.to(device, non_blocking=True),
            self.loss_weight,
        )


@dataclass
class ModalityBatch:
    """Whatever modalities a batch holds; absent ones are None."""

    images: Tensor | None = None  # float [B, 3, H, W] in [-1, 1]
    tokens: Tensor | None = None  # long [B, L]
    text_mask: Tensor | None = None  # bool [B, L], True = real token
    audio: Tensor | None = None  # float [B, T], zero mean and unit variance per utterance
    audio_mask: Tensor | None = None  # bool [B, T], True = real sample (None: no padding)
    target_mask: Tensor | None = None  # bool [B, L]: tokens a generative loss predicts (None: all real ones)
    skipped: int = 0  # items dropped because their file could not be decoded
    loss_weight: float = 1.0  # the dataset's weight in a mixture

    def __len__(self) -> int:
        return next(t.shape[0] for t in (self.images, self.tokens, self.audio) if t is not None)

    def to(self, device: torch.device | str) -> ModalityBatch:
        moved = {
            f.name: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return ModalityBatch(**moved)


@dataclass
class DocumentBatch:
    tokens: Tensor  # long [B, L], right-padded
    text_mask: Tensor  # bool [B, L], True = real token
    target_mask: Tensor  # bool [B, L]: tokens the LM loss predicts (not <image>)
    images: Tensor | None = None  # float [N, 3, H, W]: the documents' images in order
    image_counts: Tensor | None = None  # long [B]
    skipped: int = 0  # documents dropped because an image did not decode
    loss_weight: float = 1.0  # the dataset's weight in a mixture

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> DocumentBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return DocumentBatch(**moved)


@dataclass
class Regions:
    """A batch of region inputs (the region analogue of an image tensor [B, 3, H, W]).

    Indexing (`regions[idx]`) selects images like a tensor does, so code that pairs or repeats
    images works for pixels and regions alike.
    """

    features: Tensor  # [B, R, F] detector features (zero where masked or padded)
    geometry: Tensor  # [B, R, 5] x1/W, y1/H, x2/W, y2/H, area/(W*H)
    mask: Tensor  # [B, R] bool, True = a real region
    boxes: Tensor  # [B, R, 4] pixel boxes (for IoU/IoT alignment with phrases)
    gold: Tensor  # [B, R] sprite id of the annotated object a region covers (IoU >= 0.5), -1: none
    classifier_weight: Tensor  # [C, F] the detector's classifier: class logits = features @ W.T + b
    classifier_bias: Tensor  # [C]
    masked: Tensor | None = None  # [B, R] bool: regions hidden by masked region modelling

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, idx) -> Regions:
        per_image = {
            f.name: getattr(self, f.name)[idx]
            for f in fields(self)
            if f.name not in ("classifier_weight", "classifier_bias") and getattr(self, f.name) is not None
        }
        return replace(self, **per_image)

    def to(self, device, non_blocking: bool = False) -> Regions:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)

    def detector_logits(self) -> Tensor:
        """[B, R, C] class logits of the detector for these features."""
        return self.features.float() @ self.classifier_weight.float().T + self.classifier_bias.float()
