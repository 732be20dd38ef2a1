"""data2vec: the student regresses, at masked positions, the teacher's average of its top-K block
outputs over the unmasked input (Baevski et al. 2022); optionally the data2vec 2.0 recipe, where
the student encodes only the unmasked tokens, a light conv decoder fills in the masked ones, and
several masks of a sample share one teacher pass (Baevski et al. 2023).

Per modality (settings in config.py DATA2VEC_DEFAULTS, masks in objectives/masking.py):
  1. mask:     text 15% BERT-style; image blocks covering 60%; speech spans of 10 frames
  2. teacher:  unmasked input, no gradient -> top-K block outputs, each normalised (instance norm
               over positions, or layer norm over channels), averaged, optionally normalised again
  3. student:  masked input -> head (or decoder) -> predictions at the masked positions only
  4. loss:     smooth-L1 (beta) or L2, summed over channels, scaled by 1/sqrt(D) (or loss_scale),
               averaged over masked positions
The teacher follows the student after every optimizer step (`after_optimizer_step`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmtlab.objectives.masking import block_mask, span_mask
from mmtlab.objectives.mlm import IGNORE, mask_caption_tokens


@dataclass
class ModalityPass:
    prediction: Tensor  # [n_masked, D] student predictions at the masked positions
    target: Tensor  # [n_masked, D] teacher targets at the same positions (no gradient)
    hidden: Tensor  # bool [B * masks_per_sample, N]: the masked positions
    beta: float  # smooth-L1 beta (0: L2)
    scale: float  # per-token loss scale


def normalise(y: Tensor, pad: Tensor | None, how: str, eps: float = 1e-5) -> Tensor:
    """'layer': over channels per position; 'instance': over real positions per sample and
    channel (F.instance_norm on [B, D, N], padding left out); 'none'."""
    if how == "none":
        return y
    if how == "layer":
        return F.layer_norm(y, y.shape[-1:], eps=eps)
    if how != "instance":
        raise ValueError(f"unknown normalisation {how!r}")
    if pad is None:
        return F.instance_norm(y.transpose(1, 2), eps=eps).transpose(1, 2)
    w = pad[..., None].to(y.dtype)
    n = w.sum(1, keepdim=True).clamp_min(1)
    mean = (y * w).sum(1, keepdim=True) / n
    var = (((y - mean) * w) ** 2).sum(1, keepdim=True) / n
    return (y - mean) / torch.sqrt(var + eps) * w


@torch.no_grad()
def make_targets(layers: list[Tensor], pad: Tensor | None, layer_norm: str, target_norm: str) -> Tensor:
    """Average of the given block outputs, each normalised, and the average normalised again."""
    ys = [normalise(y.float(), pad, layer_norm) for y in layers]
    return normalise(sum(ys) / len(ys), pad, target_norm)


def regression_loss(prediction: Tensor, target: Tensor, beta: float, scale: float) -> Tensor:
    """Mean over positions of scale * sum over channels of smooth-L1(beta) (beta = 0: squared error)."""
    p, t = prediction.float(), target.float()
    per = F.mse_loss(p, t, reduction="none") if beta == 0 else F.smooth_l1_loss(p, t, reduction="none", beta=beta)
    return (per.sum(-1) * scale).mean()


def gather_rows(x: Tensor, keep: Tensor) -> tuple[Tensor, Tensor | None]:
    """The kept positions of each row, in order and left-aligned: values [B, K, D] (K = the most
    kept in a row) and which of them are real [B, K] (None when every row keeps K)."""
    counts = keep.sum(1)
    k = int(counts.max())
    n = keep.shape[1]
    # Kept positions first, each group in position order.
    order = torch.argsort((~keep).long() * n + torch.arange(n, device=keep.device))[:, :k]
    values = torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))
    real = torch.arange(k, device=x.device)[None, :] < counts[:, None]
    return values, (None if bool(real.all()) else real)


def scatter_rows(values: Tensor, real: Tensor | None, keep: Tensor, base: Tensor) -> Tensor:
    """Inverse of gather_rows: `base` [B, N, D] with the real `values` written at the kept positions."""
    out = base.clone()
    out[keep] = values.reshape(-1, values.shape[-1]) if real is None else values[real]
    return out


def modality_pass(model, m: str, batch, generator: torch.Generator) -> ModalityPass:
    cfg = model.cfg.data2vec
    mc = getattr(cfg, m)
    copies = cfg.masks_per_sample
    extra = model.extra_tokens(m)
    grid = lengths = None
    text_pad = None

    # Local features once; the teacher reads them without gradient, the student with.
    if m == "image":
        images = batch.images
        grid = (images.shape[-2] // model.cfg.image.patch, images.shape[-1] // model.cfg.image.patch)
        local = model.local(m, images)
        pad = None
    elif m == "speech":
        local = model.local(m, batch.audio)
        pad = model.speech_embed.frame_mask(getattr(batch, "audio_mask", None), local.shape[1])
        lengths = pad.sum(1) if pad is not None else torch.full((local.shape[0],), local.shape[1], device=local.device)
    else:
        tokens, text_mask = batch.tokens, batch.text_mask
        pad = text_pad = None if bool(text_mask.all()) else text_mask
        local = model.local(m, tokens)

    with torch.no_grad():
        x_t = model.contextualize(m, local.detach(), grid=grid)
        layers = model.teacher_layers(m, x_t, None if pad is None else _with_extra(pad, extra), mc.target_layer)
        layers = [y[:, extra:] for y in layers[-mc.top_k :]]
        target = make_targets(layers, pad, mc.layer_norm, mc.target_norm)

    rep = (lambda t: t.repeat_interleave(copies, 0)) if copies > 1 else (lambda t: t)
    n = local.shape[0] * copies
    if m == "text":
        t = model.cfg.text
        tokens_r, mask_r = rep(tokens), rep(text_mask)
        inputs, labels = mask_caption_tokens(tokens_r, mask_r, t, mc.mask_prob, generator)
        hide = labels != IGNORE
        # data2vec: the student reads [MASK] / random / unchanged tokens; data2vec 2.0 drops them.
        student_local = model.local(m, tokens_r if cfg.efficient else inputs)
        pad_r = None if text_pad is None else rep(text_pad)
    elif m == "image":
        hide = block_mask(n, grid, mc.mask_prob, mc.mask_length, generator=generator).to(local.device)
        student_local, pad_r = rep(local), None
    else:
        hide = span_mask(n, local.shape[1], mc.mask_prob, mc.mask_length, lengths=rep(lengths), generator=generator)
        hide = hide.to(local.device)
        student_local, pad_r = rep(local), None if pad is None else rep(pad)

    if not cfg.efficient:
        x_s = model.contextualize(m, student_local, hide, grid=grid)
        h = model.student(m, x_s, None if pad_r is None else _with_extra(pad_r, extra))[:, extra:]
        prediction = model.head[m](h[hide])
    else:
        x_s = model.contextualize(m, student_local, hide if m == "speech" else None, grid=grid)
        keep = ~hide if pad_r is None else (~hide & pad_r)
        visible, real = gather_rows(x_s[:, extra:], keep)
        visible = torch.cat([x_s[:, :extra], visible], dim=1)
        h = model.student(m, visible, None if real is None else _with_extra(real, extra))[:, extra:]
        # Masked positions enter the decoder as small noise (data2vec 2.0's mask_noise_std), padding as 0.
        noise = torch.randn(keep.shape + h.shape[-1:], generator=generator, device=h.device) * cfg.mask_noise_std
        base = noise.to(h.dtype) if pad_r is None else noise.to(h.dtype) * pad_r[..., None]
        prediction = model.decoder[m](scatter_rows(h, real, keep, base), grid)[hide]
    scale = mc.loss_scale if mc.loss_scale is not None else 1 / math.sqrt(model.cfg.width)
    return ModalityPass(prediction, rep(target)[hide], hide, mc.loss_beta, scale)


def _with_extra(mask: Tensor, extra: int) -> Tensor:
    """A padding mask with `extra` always-real positions (CLS) in front."""
    if not extra:
        return mask
    return torch.cat([torch.ones(mask.shape[0], extra, dtype=torch.bool, device=mask.device), mask], dim=1)


_BATCH_FIELD = {"image": "images", "text": "tokens", "speech": "audio"}


def data2vec_pass(model, batch, generator: torch.Generator) -> dict[str, ModalityPass]:
    """One data2vec forward for every modality of the model."""
    model = getattr(model, "module", model)  # DDP / FSDP wrappers
    if int(model.ema_updates) == 0:
        model.sync_teacher()  # the teacher starts as the student (also after train.init_from)
    out = {}
    for m in model.modalities:
        if getattr(batch, _BATCH_FIELD[m], None) is None:
            raise ValueError(f"data2vec: the batch has no {_BATCH_FIELD[m]} for the model's {m} encoder")
        out[m] = modality_pass(model, m, batch, generator)
    return out


class Data2VecLoss(nn.Module):
    name = "data2vec"

    def forward(self, step) -> Tensor:
        total = 0.0
        for p in step.data2vec.values():
            if p.prediction.shape[0] == 0:  # nothing masked (a batch of very short captions)
                total = total + p.prediction.sum() * 0.0
            else:
                total = total + regression_loss(p.prediction, p.target, p.beta, p.scale)
        return total

    def after_optimizer_step(self, model, step: int) -> None:
        getattr(model, "module", model).update_teacher()
