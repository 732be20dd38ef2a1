"""Linear probes: what a frozen encoder's mean-pooled features say about the input, per modality.

- image  `sprite`:   which sprite is the largest in the scene (sprite id from the Karpathy JSON's
                      `labels`/`boxes`; classes of the probe's training images), and its category
                      (smileys, animals, food ... 10 classes); `count`: how many sprites
- text   `style`:    which corpus style a caption has (alt_text / descriptive / narrative)
- speech `keyword`:  which of 20 sprite names is spoken, leave-one-voice-out over 4 voices

Protocol: features = mean of the final states over real positions (no CLS; a model that pools by
CLS is also probed on its CLS token, as `image_sprite_cls`, ...), standardised with
the probe-training statistics; multinomial logistic regression fitted by L-BFGS, its L2 weight
chosen on a held-out fifth of the training items, then refitted on all of them. Each task is run
on the trained encoder and on the same architecture freshly initialised with the run's seed
(`random`), so the gap is what pretraining added; `majority` is the most frequent training class.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mmtlab.data.pairs import ImageCache, to_float
from mmtlab.progress import track

WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)


def _mean_pool(states: Tensor, real: Tensor | None) -> Tensor:
    if real is None:
        return states.mean(1)
    w = real[..., None].to(states.dtype)
    return (states * w).sum(1) / w.sum(1).clamp_min(1)


@torch.no_grad()
def image_features(
    model, records: Sequence, size: int, batch_size: int = 256, progress: bool = False
) -> tuple[Tensor, Tensor]:
    """(mean of the patch tokens, the CLS token) of each image's final states."""
    cache = ImageCache(records, size, keep=False)
    means, cls = [], []
    for start in track(range(0, len(records), batch_size), "image features", enabled=progress):
        imgs = [cache.get(i) for i in range(start, min(start + batch_size, len(records)))]
        if any(im is None for im in imgs):
            raise ValueError("probe: an image failed to decode; the probe needs every image of its split")
        states = model(images=to_float(torch.stack(imgs)))["image"]
        means.append(_mean_pool(states[:, 1:], None))
        cls.append(states[:, 0])
    return torch.cat(means), torch.cat(cls)


@torch.no_grad()
def text_features(model, tokenizer, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> Tensor:
    out = []
    for start in track(range(0, len(texts), batch_size), "text features", enabled=progress):
        tokens, mask = tokenizer(list(texts[start : start + batch_size]))
        states = model(tokens=tokens, text_mask=mask)["text"]
        out.append(_mean_pool(states, mask))
    return torch.cat(out)


@torch.no_grad()
def speech_features(model, waves: Sequence[np.ndarray], batch_size: int = 32, progress: bool = False) -> Tensor:
    from mmtlab.data.unimodal import pad_waves

    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # similar lengths share a batch
    feats = [None] * len(waves)
    for start in track(range(0, len(order), batch_size), "speech features", enabled=progress):
        idx = order[start : start + batch_size]
        audio, mask = pad_waves([waves[i] for i in idx])
        states = model(audio=audio, audio_mask=mask)["speech"]
        real = model.speech_embed.frame_mask(mask, states.shape[1])
        for i, f in zip(idx, _mean_pool(states, real)):
            feats[i] = f
    return torch.stack(feats)


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, weight_decay: float, steps: int = 100) -> Tensor:
    """Multinomial logistic regression (weights [D+1, C], bias last) by full-batch L-BFGS."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.zeros(x1.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        w.grad = None  # (not opt.zero_grad(): its wrapper costs more than this whole step)
        loss = torch.nn.functional.cross_entropy(x1 @ w, y) + weight_decay * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    # Small problems run many tiny ops: one thread beats waking a pool for each of them.
    with _threads(1 if x1.numel() * n_classes < 10_000_000 else torch.get_num_threads()):
        opt.step(closure)
    return w.detach()


def predict(w: Tensor, x: Tensor) -> Tensor:
    return (torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w).argmax(1)


def linear_probe(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, seed: int = 0) -> dict:
    """Accuracy (%) of a logistic-regression probe; labels are any integers, test labels never seen
    in training count as errors."""
    classes = torch.unique(y_train)
    index = {int(c): i for i, c in enumerate(classes)}
    ytr = torch.tensor([index[int(c)] for c in y_train])
    yte = torch.tensor([index.get(int(c), -1) for c in y_test])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xtr, xte = ((x_train - mean) / std).double(), ((x_test - mean) / std).double()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(xtr), generator=g)
    n_val = max(1, len(xtr) // 5)
    val, fit = perm[:n_val], perm[n_val:]
    scores = {
        wd: (predict(fit_logistic(xtr[fit], ytr[fit], len(classes), wd), xtr[val]) == ytr[val]).double().mean().item()
        for wd in WEIGHT_DECAYS
    }
    best = max(WEIGHT_DECAYS, key=lambda wd: (scores[wd], wd))  # ties: the stronger regulariser
    acc = (predict(fit_logistic(xtr, ytr, len(classes), best), xte) == yte).double().mean().item()
    return {"accuracy": 100 * acc, "ci95": 100 * 1.96 * math.sqrt(acc * (1 - acc) / len(yte)), "weight_decay": best}


def majority(y_train: Tensor, y_test: Tensor) -> float:
    top = Counter(y_train.tolist()).most_common(1)[0][0]
    return 100 * (y_test == top).double().mean().item()


# -- tasks: (features of train items, labels, features of test items, labels) --------------------


def _largest_sprite(record) -> int:
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in record.boxes]
    return record.labels[int(np.argmax(areas))]


def sprite_categories() -> dict[int, str]:
    from mmtlab.data import emoji_scenes

    meta = json.loads((Path(emoji_scenes.__file__).parent / "assets" / "sprites.json").read_text())
    return {s["id"]: s["category"] for s in meta["sprites"]}


def image_task(cfg, n_train: int, n_test: int) -> tuple[list, list, dict[str, tuple[Tensor, Tensor]]]:
    """The probe images (train, test) and each image task's (train labels, test labels):
    sprite -- id of the largest sprite (identity); category -- that sprite's category; count -- how
    many sprites the scene has. The earlier full-vocabulary models could count but not tell which
    sprites were there, so count beside identity tells which kind of knowledge a model has. (A
    presence probe -- is the most common sprite anywhere in the scene -- was tried and dropped: it
    is in 7% of the demo's scenes, so every probe answered "no".)"""
    from mmtlab.data.sources import load_split

    train = [r for r in load_split(cfg.data, cfg.data.train_split) if r.labels and r.boxes][:n_train]
    test = [r for r in load_split(cfg.data, cfg.data.test_split) if r.labels and r.boxes][:n_test]
    if not train or not test:
        raise ValueError("probe sprite: the splits have no sprite labels and boxes (an emoji-scenes build has them)")
    cats = sprite_categories()
    names = sorted(set(cats.values()))

    def labels(fn) -> tuple[Tensor, Tensor]:
        return torch.tensor([fn(r) for r in train]), torch.tensor([fn(r) for r in test])

    sprite = labels(_largest_sprite)
    category = tuple(torch.tensor([names.index(cats[int(s)]) for s in ids]) for ids in sprite)
    return train, test, {"sprite": sprite, "category": category, "count": labels(lambda r: len(r.labels))}


def text_task(cfg, n_train: int, n_test: int) -> tuple[list[str], list[str], Tensor, Tensor]:
    """Styled captions of the training split: the first n_train for the probe's training, the last
    n_test for its test (disjoint)."""
    from mmtlab.data.sources import load_split

    items = [
        (c, s)
        for r in load_split(cfg.data, cfg.data.train_split)
        for c, s in zip(r.captions, r.extra.get("styles") or [None] * len(r.captions))
        if s and c.strip()
    ]
    if len({s for _, s in items}) < 2:
        raise ValueError("probe style: the training split has no sentence `style` fields with two or more styles")
    n_test = min(n_test, len(items) // 3)
    train, test = items[: min(n_train, len(items) - n_test)], items[-n_test:]
    styles = sorted({s for _, s in items})
    labels = [torch.tensor([styles.index(s) for _, s in part]) for part in (train, test)]
    return [c for c, _ in train], [c for c, _ in test], labels[0], labels[1]


# -- the evaluation --------------------------------------------------------------------------


def _compare(
    features: Callable[[object], tuple[Tensor, Tensor]], models: dict, y_train: Tensor, y_test: Tensor
) -> dict:
    out = {}
    for name, model in models.items():
        ftr, fte = features(model)
        out[name] = linear_probe(ftr, y_train, fte, y_test)
    return {**out, "majority": majority(y_train, y_test), "n_train": len(y_train), "n_test": len(y_test)}


def run_probes(
    model,
    random_model,
    cfg,
    tokenizer,
    modalities: Sequence[str],
    *,
    n_train: int = 4000,
    n_test: int = 1000,
    spoken=None,
    progress: bool = True,
) -> dict:
    """Probe `model` and `random_model` (same architecture, untrained) on each modality's task."""
    models = {"trained": model.eval(), "random": random_model.eval()}
    result = {}
    if "image" in modalities:
        train, test, tasks = image_task(cfg, n_train, n_test)
        size = cfg.model.image.size
        cache = {}

        def image_feats(m, which: int):
            if id(m) not in cache:
                cache[id(m)] = (image_features(m, train, size, progress=progress), image_features(m, test, size))
            return cache[id(m)][0][which], cache[id(m)][1][which]

        # The protocol's features are the patch mean; a model that pools by CLS (its contrastive
        # embedding is read there) is also probed on the CLS token: `_cls` rows.
        for suffix, which in [("", 0)] + ([("_cls", 1)] if cfg.model.pool == "cls" else []):
            feats = functools.partial(image_feats, which=which)
            for task, (y_train, y_test) in tasks.items():
                result[f"image_{task}{suffix}"] = _compare(feats, models, y_train, y_test)
    if "text" in modalities:
        try:
            tr, te, ytr, yte = text_task(cfg, n_train, n_test)
        except ValueError as e:  # e.g. a single-style build: the image probes still stand
            result["text_style"] = {"skipped": str(e)}
        else:
            result["text_style"] = _compare(
                lambda m: (text_features(m, tokenizer, tr, progress=progress), text_features(m, tokenizer, te)),
                models,
                ytr,
                yte,
            )
    if "speech" in modalities:
        result["speech_keyword"] = keyword_spotting(models, spoken, progress=progress)
    return result


def keyword_spotting(models: dict, spoken, progress: bool = False) -> dict:
    """Leave-one-voice-out: train on three voices' renditions of every keyword, test on the fourth."""
    utts = spoken.of_kind("keyword")
    if not utts:
        raise ValueError(f"probe keyword: {spoken.root} has no keyword utterances")
    waves = [spoken.audio(u) for u in utts]
    labels = torch.tensor([int(u["label"]) for u in utts])
    voices = sorted({u["voice"] for u in utts})
    out: dict = {}
    for name, model in models.items():
        feats = speech_features(model, waves, progress=progress)
        correct = total = 0
        for v in voices:
            test = torch.tensor([u["voice"] == v for u in utts])
            r = linear_probe(feats[~test], labels[~test], feats[test], labels[test])
            correct += r["accuracy"] / 100 * int(test.sum())
            total += int(test.sum())
        acc = correct / total
        out[name] = {"accuracy": 100 * acc, "ci95": 100 * 1.96 * math.sqrt(acc * (1 - acc) / total)}
    out.update(majority=100 / len(torch.unique(labels)), n_train=len(utts) * (len(voices) - 1) // len(voices))
    out.update(n_test=len(utts), folds=voices)
    return out
