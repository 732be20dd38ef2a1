"""The toy detector: a small sprite classifier that plays Faster R-CNN for emoji-scenes.

BERT-style vision-language models (ViLBERT, LXMERT, UNITER; VOLTA) read an image as a set of
detected regions: a pooled feature vector per box and the detector's class distribution over
1,601 Visual Genome classes, which masked-region-modelling losses use as targets. Our analogue:
each proposal box is cropped and resized to 32x32 (RoIAlign-style bilinear sampling), a small CNN
gives a non-negative feature vector (the "fc7" analogue), and a linear classifier over the
non-held-out sprites plus a background class gives the class distribution. Its mistakes are the
"silver" labels of the cross-modal ablation study.

The weights are trained once by tools/train_toy_detector.py and shipped in the package
(`assets/toy_detector.safetensors`, fp16, ~0.3 MB); nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file
from torch import Tensor, nn

from mmtlab.io import atomic_write_bytes

CROP = 32  # side of the resampled region crop
BACKGROUND = -1  # sprite id of the background class
PACKAGED = "toy_detector.safetensors"


def crop_boxes(image: Tensor, boxes: Tensor, size: int = CROP) -> Tensor:
    """Bilinear crops [N, C, size, size] of float `image` [C, H, W] at pixel `boxes` [N, 4].

    Samples are taken at the centres of a size x size grid laid over each box, as RoIAlign does
    with one sample per bin; a box's edges are continuous pixel coordinates (x2, y2 exclusive).
    """
    _, h, w = image.shape
    n = boxes.shape[0]
    t = (torch.arange(size, dtype=image.dtype, device=image.device) + 0.5) / size
    x1, y1, x2, y2 = boxes.to(image.dtype).unbind(-1)
    xs = x1[:, None] + (x2 - x1)[:, None] * t[None]  # [N, size] continuous x
    ys = y1[:, None] + (y2 - y1)[:, None] * t[None]
    gx = (2 * xs / w - 1)[:, None, :].expand(n, size, size)
    gy = (2 * ys / h - 1)[:, :, None].expand(n, size, size)
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(image.expand(n, -1, -1, -1), grid, mode="bilinear", align_corners=False)


class ToyDetector(nn.Module):
    def __init__(self, num_classes: int, feature_dim: int = 64, width: int = 32):
        super().__init__()
        w = width

        def block(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.backbone = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2),
            *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.MaxPool2d(2),
            *block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * w, feature_dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.class_sprite_ids: list[int] = [BACKGROUND] * num_classes
        self.digest = ""
        self.meta: dict = {}

    @property
    def feature_dim(self) -> int:
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def forward(self, crops: Tensor) -> tuple[Tensor, Tensor]:
        """crops [N, 3, 32, 32] in [-1, 1] -> (features [N, F] >= 0, class logits [N, C])."""
        feats = self.backbone(crops)
        return feats, self.classifier(feats)

    @torch.no_grad()
    def detect(self, image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        """One float image [3, H, W] in [-1, 1] and its pixel boxes [N, 4] -> features, logits."""
        return self(crop_boxes(image, boxes))

    # -- files -------------------------------------------------------------------------------

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        """fp16 safetensors; the architecture and class table go in the header metadata."""
        tensors = {
            k: v.detach().cpu().half().contiguous()
            for k, v in self.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        header = {
            "num_classes": str(self.num_classes),
            "feature_dim": str(self.feature_dim),
            "width": str(self.backbone[0].out_channels),
            "class_sprite_ids": json.dumps(self.class_sprite_ids),
            "meta": json.dumps(meta or {}),
        }
        tmp = Path(path).with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=header)
        atomic_write_bytes(path, tmp.read_bytes())
        tmp.unlink()


def load_detector(path: str | Path | None = None) -> ToyDetector:
    """The shipped detector (or one at `path`), in eval mode, fp32. `detector.digest` identifies
    the weights (caches of region features are keyed by it)."""
    if path is None:
        ref = resources.files("mmtlab.data.emoji_scenes") / "assets" / PACKAGED
        if not ref.is_file():
            raise FileNotFoundError(
                f"the packaged toy detector is missing ({ref}); build it with tools/train_toy_detector.py"
            )
        data = ref.read_bytes()
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"data.regions.detector: no file at {p}")
        data = p.read_bytes()
    tensors = load_safetensors_bytes(data)
    header = _header(data)
    det = ToyDetector(int(header["num_classes"]), int(header["feature_dim"]), int(header["width"]))
    det.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
    det.class_sprite_ids = json.loads(header["class_sprite_ids"])
    det.meta = json.loads(header.get("meta", "{}"))
    det.digest = hashlib.sha256(data).hexdigest()
    return det.eval()


def _header(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata: 8 bytes of length, then JSON."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})
