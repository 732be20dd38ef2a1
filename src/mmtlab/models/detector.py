"""Open-vocabulary detection on a pretrained image tower, OWL-ViT style (Minderer et al. 2022,
"Simple Open-Vocabulary Object Detection with Vision Transformers").

Every output patch token of the image tower is one detection: a box MLP regresses its box and a
linear projection gives its class embedding; the class logits are the scaled cosine similarities
of that embedding to the text embeddings of the category names, plus a learned per-token shift
and scale. So the classifier is whatever vocabulary the text encoder embeds, and a detector
trained on base categories can be queried with any names.

Why this design rather than a proposal + RoI head (F-VLM, RO-ViT): it reuses the image tower
unchanged (no FPN, no RoIAlign, no anchors), it works for any family that returns image tokens,
and its class projection starts as the pretrained contrastive image projection, so a token's first
class embedding lives in the same space as the text embeddings it is compared with.

The text side is a frozen copy of the pretrained model (`self.text`): fine-tuning the image tower
can never move the name embeddings, so the novel names at test time are embedded by exactly the
encoder that was pretrained (for a single-stream layout that shares weights between the
modalities, the image side's updates would otherwise leak into the text tower).

Positional embeddings: the tower runs at the detection resolution; PatchEmbedding resamples its
learned grid to the larger patch grid (bicubic), which a model pretrained with cropped positional
embeddings (`model.image.cpe`) has in effect seen already.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INIT_SCALE = 10.0
INIT_SHIFT = -4.0


class BoxHead(nn.Module):
    """OWL-ViT's box MLP: three layers, GELU, to (cx, cy, w, h) logits added to the token's prior
    (`box_bias`). The last layer starts at zero, so an untrained head predicts exactly the prior."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 4))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def box_bias(grid_h: int, grid_w: int) -> Tensor:
    """[h*w, 4] inverse-sigmoid box priors: each token's patch centre and a patch-sized box, so an
    untrained head predicts the patch it sits on (OWL-ViT's `compute_box_bias`)."""
    ys = (torch.arange(grid_h, dtype=torch.float32) + 0.5) / grid_h
    xs = (torch.arange(grid_w, dtype=torch.float32) + 0.5) / grid_w
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    wh = torch.stack([torch.full_like(cx, 1 / grid_w), torch.full_like(cy, 1 / grid_h)], -1)
    boxes = torch.cat([torch.stack([cx, cy], -1), wh], -1).reshape(-1, 4).clamp(1e-4, 1 - 1e-4)
    return torch.log(boxes) - torch.log1p(-boxes)


class Detector(nn.Module):
    def __init__(self, backbone: nn.Module, image_size: int):
        super().__init__()
        if getattr(backbone, "contrastive", None) is None:
            raise ValueError("open-vocabulary detection needs a model with a contrastive text side")
        cfg = backbone.cfg
        self.image_size = image_size
        self.patch = cfg.image.patch
        if image_size % self.patch:
            raise ValueError(f"detection image size {image_size} is not a multiple of the {self.patch}-px patch")
        dim = backbone.contrastive.image_proj.in_features
        embed = backbone.contrastive.image_proj.out_features
        self.backbone = backbone  # fine-tuned: the image tower (its text parts get no gradient)
        self.text = copy.deepcopy(backbone).requires_grad_(False).eval()  # frozen: embeds the names
        self.box_head = BoxHead(dim)
        self.class_proj = nn.Linear(dim, embed)
        self.logit_shift = nn.Linear(dim, 1)
        self.logit_scale = nn.Linear(dim, 1)
        with torch.no_grad():  # start from the pretrained joint space (see the module docstring)
            self.class_proj.weight.copy_(backbone.contrastive.image_proj.weight)
            self.class_proj.bias.zero_()
            for lin in (self.logit_shift, self.logit_scale):
                nn.init.normal_(lin.weight, std=1e-3)
            # start at elu(9) + 1 = 10 times the cosine (logits within +-10 of the shift: the pretrained
            # softmax temperature, up to 100, would saturate every sigmoid) and a shift of -4, so a
            # token's probability starts near 0.02 (the focal-loss prior of RetinaNet)
            self.logit_scale.bias.fill_(INIT_SCALE - 1.0)
            self.logit_shift.bias.fill_(INIT_SHIFT)
        grid = image_size // self.patch
        self.register_buffer("box_bias", box_bias(grid, grid), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.text.eval()  # the frozen copy never trains (no dropout, no BatchNorm statistics)
        return self

    @torch.no_grad()
    def embed_queries(self, tokens: Tensor, mask: Tensor | None = None) -> Tensor:
        """L2-normalised text embeddings [Q, E] of query texts, by the frozen pretrained text side."""
        return self.text.encode_text(tokens, mask)

    @torch.no_grad()
    def embed_names(self, tokenizer, texts: list[str], per_name: int, batch_size: int = 256) -> Tensor:
        """Prompt ensembling: [C, E] unit class embeddings from name-major prompts (`per_name`
        templates each, data/prompts.py), each normalised, averaged per name, renormalised."""
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
        emb = F.normalize(torch.cat([self.embed_queries(*tokenizer(c)) for c in chunks]).float(), dim=-1)
        return F.normalize(emb.view(-1, per_name, emb.shape[-1]).mean(1), dim=-1)

    def patch_tokens(self, images: Tensor) -> Tensor:
        """The image tower's final-normed patch tokens [B, h*w, D] (a [CLS] token dropped)."""
        n = (images.shape[-2] // self.patch) * (images.shape[-1] // self.patch)
        return self.backbone.image_tokens(images)[:, -n:]

    def forward(self, images: Tensor, queries: Tensor) -> dict[str, Tensor]:
        """images [B, 3, S, S] in [-1, 1]; queries [C, E] unit text embeddings. Returns logits
        [B, N, C] (sigmoid: a token's probability of being an object of class c) and boxes [B, N, 4]
        as (cx, cy, w, h) in [0, 1] of the image."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"the detector reads {self.image_size} px images, got {tuple(images.shape[-2:])}")
        x = self.patch_tokens(images)
        boxes = torch.sigmoid(self.box_head(x) + self.box_bias.to(x.dtype))
        emb = F.normalize(self.class_proj(x), dim=-1)
        sim = emb @ queries.to(emb.dtype).T
        logits = (F.elu(self.logit_scale(x)) + 1) * sim + self.logit_shift(x)
        return {"logits": logits, "boxes": boxes}


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x1, y1, x2, y2 = b.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def pairwise_iou(a: Tensor) -> Tensor:
    """IoU [N, N] of xyxy boxes a [N, 4] with each other."""
    lt = torch.maximum(a[:, None, :2], a[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], a[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = (a[:, 2:] - a[:, :2]).clamp_min(0).prod(-1)
    return inter / (area[:, None] + area[None, :] - inter).clamp_min(1e-9)


def fast_nms(scores: Tensor, boxes: Tensor, threshold: float) -> Tensor:
    """Class-wise Fast NMS (Bolya et al. 2019, YOLACT, Sec. 3.3): scores [N, C] of N boxes [N, 4]
    (xyxy) with a class's score zeroed where a higher-scoring box of that class overlaps it by IoU >
    `threshold`. Every class shares the tokens' boxes, so one IoU matrix serves them all."""
    overlap = pairwise_iou(boxes) > threshold  # [N, N]
    higher = scores.T[:, None, :] > scores.T[:, :, None]  # [C, i, j]: box j outscores box i in class c
    suppressed = (higher & overlap[None]).any(-1).T  # [N, C]
    return scores.masked_fill(suppressed, 0.0)


@torch.no_grad()
def top_detections(
    logits: Tensor, boxes: Tensor, k: int = 100, nms: float | None = None
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Per image the `k` highest (token, class) scores: (boxes [k, 4] xyxy in [0, 1], scores [k],
    query indices [k]). A token may give several classes, as in DETR / OWL-ViT evaluation. `nms`:
    first suppress overlapping boxes of a class (`fast_nms` at that IoU)."""
    out = []
    scores = torch.sigmoid(logits.float())
    b, n, c = scores.shape
    for i in range(b):
        corners = cxcywh_to_xyxy(boxes[i].float()).clamp(0, 1)
        si = scores[i] if nms is None else fast_nms(scores[i], corners, nms)
        s, idx = si.flatten().topk(min(k, n * c))
        out.append((corners[idx // c], s, idx % c))
    return out
