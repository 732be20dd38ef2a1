"""Object-knowledge evals (eval/zeroshot.py) and their generated images (emoji_scenes/singles.py)."""

import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import cli_error, invoke, tiny_run_config

from mmtlab.data.emoji_scenes.english import with_article
from mmtlab.data.emoji_scenes.palette import COLOR_NAMES, COLORS
from mmtlab.data.emoji_scenes.singles import controlled_group, single_sprite
from mmtlab.data.emoji_scenes.sprites import SpriteAtlas
from mmtlab.eval.zeroshot import (
    TEMPLATES,
    class_embeddings,
    controlled_retrieval,
    expected_hits,
    zero_shot_classification,
)

VOCAB = list(range(40, 100))


def digest(im) -> str:
    return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


def key(x: torch.Tensor) -> bytes:
    """A float image batch row -> a hashable key (the fake models' lookup)."""
    return x.numpy().tobytes()


def test_generated_images_are_deterministic_and_controlled():
    a, b = single_sprite(3, 17, 2), single_sprite(3, 17, 2)
    assert digest(a.image) == digest(b.image) and a.box == b.box
    assert digest(single_sprite(3, 17, 3).image) != digest(a.image)
    assert digest(single_sprite(4, 17, 2).image) != digest(a.image)
    g1, g2 = controlled_group(0, 5, VOCAB, group_size=6), controlled_group(0, 5, VOCAB, group_size=6)
    assert [digest(i.image) for i in g1] == [digest(i.image) for i in g2]
    assert [i.caption for i in g1] == [i.caption for i in g2]
    # One background and one count per group, a different sprite set (and caption) per scene.
    assert len({i.background for i in g1}) == 1 and len({i.count for i in g1}) == 1
    assert len({tuple(sorted(i.labels)) for i in g1}) == 6 and len({i.caption for i in g1}) == 6
    assert all(len(i.labels) == i.count and set(i.labels) <= set(VOCAB) for i in g1)
    # The very same background pixels (noise included): where neither scene has a sprite, they agree.
    arrays = [np.asarray(i.image) for i in g1]
    assert min((a == b).all(-1).mean() for a, b in zip(arrays, arrays[1:])) > 0.2


def test_generated_images_are_disjoint_from_the_build(tiny_data):
    meta = json.loads((tiny_data / "meta.json").read_text())
    built = {digest_file(p) for p in (tiny_data / "images").rglob("*.png")}
    assert len(built) == sum(c["images"] for k, c in meta["counts"].items() if isinstance(c, dict))
    seen = meta["vocabulary"]["ids"]
    singles = {digest(single_sprite(0, s, k).image) for s in seen[:100] for k in range(3)}
    groups = {digest(i.image) for g in range(10) for i in controlled_group(0, g, seen)}
    assert len(singles) == 300 and len(groups) == 80
    assert not (singles | groups) & built


def digest_file(path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        return digest(im)


def test_prompt_ensembling_matches_a_reference():
    g = torch.Generator().manual_seed(0)
    table: dict[str, torch.Tensor] = {}

    def encode(texts):  # a fixed random, unnormalised embedding per text
        return torch.stack([table.setdefault(t, torch.randn(8, generator=g) * (1 + len(t) % 5)) for t in texts])

    names = ["cat", "apple", "hot face"]
    got = class_embeddings(encode, names, TEMPLATES, batch_size=4)
    for i, name in enumerate(names):
        vecs = [encode([t.format(with_article(name))])[0] for t in TEMPLATES]
        ref = sum(v / v.norm() for v in vecs) / len(vecs)
        assert torch.allclose(got[i], ref / ref.norm(), atol=1e-6)
        plain = sum(vecs) / len(vecs)  # averaging before normalising weights long vectors more
        assert not torch.allclose(got[i], plain / plain.norm(), atol=1e-3)
    assert "a picture of an apple." in table


def test_ties_count_as_a_random_tie_break():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0], [0.0, 3.0, 1.0, 1.0]])
    hits = expected_hits(scores, torch.tensor([0, 1, 2]), 1)
    assert torch.allclose(hits, torch.tensor([0.25, 0.0, 0.0], dtype=torch.float64))
    top2 = expected_hits(scores, torch.tensor([0, 1, 2]), 2)  # rows 2 and 3: rank 2 or 3 of 4
    assert torch.allclose(top2, torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64))


# ------------------------------------------------------------------------------- fake models

_PALETTE = torch.tensor([COLORS[c] for c in COLOR_NAMES], dtype=torch.float32) / 127.5 - 1


def background_only_images(x: torch.Tensor) -> torch.Tensor:
    """Sees only the background: one-hot of the palette colour most pixels are close to (sprite
    pixels are rarely within noise of a palette colour, background pixels nearly always)."""
    px = x.permute(0, 2, 3, 1).reshape(len(x), -1, 3)
    d = torch.cdist(px, _PALETTE[None].expand(len(x), -1, -1))
    near = d.min(-1)
    close = near.values < 0.08
    counts = torch.stack([torch.bincount(i[c], minlength=len(COLOR_NAMES)) for i, c in zip(near.indices, close)])
    return F.one_hot(counts.argmax(1), len(COLOR_NAMES)).float()


def colour_words(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[float(c in t.lower().split()) for c in COLOR_NAMES] for t in texts]) + 1e-3


def test_a_background_only_model_scores_chance_on_the_controlled_eval():
    out = controlled_retrieval(background_only_images, colour_words, VOCAB, groups=40, group_size=8)
    assert out["chance_r1"] == pytest.approx(12.5)
    assert abs(out["t2i_r1"] - 12.5) < 2.5 and abs(out["i2t_r1"] - 12.5) < 6
    # The same model is well above chance when the candidates have other backgrounds.
    assert out["uncontrolled_t2i_r1"] > 4 * out["uncontrolled_chance_r1"]


def test_a_model_given_the_answer_scores_100():
    atlas = SpriteAtlas.load()
    heldout = atlas.heldout_ids()[:10]
    seen = [s for s in VOCAB if s not in heldout][:30]
    classes = sorted(seen + heldout)
    answer = {}  # image pixels -> sprite ids in it
    for s in classes:
        for k in range(2):
            answer[key(torch.from_numpy(np.array(single_sprite(0, s, k).image)).float())] = (s,)
    items = [i for g in range(12) for i in controlled_group(0, g, seen, group_size=5)]
    for i in items:
        answer[key(torch.from_numpy(np.array(i.image)).float())] = i.labels
    by_text = {t.format(with_article(atlas.names[s])): (s,) for s in classes for t in TEMPLATES}
    by_text.update({i.caption: i.labels for i in items})
    n = len(atlas)

    def multi_hot(ids):
        v = torch.zeros(n)
        v[list(ids)] = 1.0
        return v

    def images(x):  # undo the [-1, 1] scaling to find the pixels
        return torch.stack([multi_hot(answer[key(((r + 1) * 127.5).round().permute(1, 2, 0).contiguous())]) for r in x])

    def texts(t):
        return torch.stack([multi_hot(by_text[s]) for s in t])

    cls = zero_shot_classification(images, texts, seen, heldout, per_class=2)
    for name in ("seen", "heldout", "seen_within", "heldout_within"):
        assert cls[name]["top1"] == 100.0 and cls[name]["top5"] == 100.0
    assert cls["seen"]["chance_top1"] == pytest.approx(100 / 40)
    assert cls["heldout_within"]["chance_top1"] == pytest.approx(100 / 10)
    ctl = controlled_retrieval(images, texts, seen, groups=12, group_size=5)
    assert ctl["t2i_r1"] == 100.0 and ctl["i2t_r1"] == 100.0 and ctl["chance_r1"] == pytest.approx(20.0)


def test_eval_zeroshot_cli_on_a_trained_run(tiny_data, tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "dual.yaml"
    cfg.write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=2)))
    run = tmp_path / "run"
    invoke("train", cfg, "--out", run)
    out = invoke("eval", "zeroshot", run, "--per-class", "1", "--groups", "3", "--group-size", "4")
    assert "zero-shot classification" in out and "controlled retrieval" in out
    r = json.loads((run / "eval" / "zeroshot.json").read_text())
    meta = json.loads((tiny_data / "meta.json").read_text())
    c = r["classification"]
    assert c["seen"]["n_images"] == len(meta["vocabulary"]["ids"])
    assert c["heldout"]["n_images"] == len(meta["heldout_vocabulary"]["ids"])
    assert 0 <= r["seen_top1"] <= 100 and r["controlled_chance_r1"] == pytest.approx(25.0)
    assert r["controlled"]["groups"] == 3
    # a one-image group has no distractor: a clear error (checked once, in the runner), not chance
    code, err = cli_error(monkeypatch, capsys, "eval", "zeroshot", run, "--group-size", "1")
    assert code != 0 and "--group-size must be a whole number >= 2" in err
