"""Cross-encoder retrieval: cached batched scoring equals naive per-pair scoring, rerank with k = all
equals exhaustive exactly, shortlist bookkeeping, and the command line on region models."""

import json

import pytest
import torch
import yaml
from conftest import tiny_run_config
from typer.testing import CliRunner

from mmtlab.cli import app
from mmtlab.config import load_config
from mmtlab.data.pairs import ImageCache
from mmtlab.data.sources import load_split
from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece
from mmtlab.eval.cross import cross_metrics, encode_unpaired_records, exhaustive_scores, rerank_scores
from mmtlab.eval.retrieval import recall_at_k
from mmtlab.models import build_model


@pytest.fixture(scope="module")
def eval_records(tiny_data):
    return load_split(load_config(tiny_run_config(tiny_data)).data, "test")


@pytest.fixture(scope="module")
def tokenizer(eval_records):
    return TextTokenizer(train_wordpiece([c for r in eval_records for c in r.captions], 200), 24)


def cross_encoder(tiny_data, tokenizer, layout, **layout_args):
    raw = tiny_run_config(tiny_data)
    raw["model"] |= {
        "layout": layout,
        "layout_args": layout_args,
        "text": {"max_len": 24, "vocab_size": tokenizer.vocab_size},
    }
    raw["objectives"] = {"itm": 1.0, "contrastive": 1.0}
    torch.manual_seed(0)
    return build_model(load_config(raw)).eval()


LAYOUTS = [("merged", {}), ("mixed", {"k": 1}), ("coattention", {"text_layers": 1}), ("modality_specific", {})]


@pytest.mark.parametrize("layout, args", LAYOUTS, ids=[name for name, _ in LAYOUTS])
def test_cached_scoring_equals_naive_per_pair_scoring(tiny_data, tokenizer, eval_records, layout, args):
    model = cross_encoder(tiny_data, tokenizer, layout, **args)
    records = eval_records[:4]
    un = encode_unpaired_records(model, tokenizer, records, batch_size=3, progress=False)
    cached = exhaustive_scores(model, un, chunk=7, progress=False)  # odd chunking on purpose
    source = ImageCache(records, 64)
    captions = [c for r in records for c in r.captions]
    naive = torch.empty(len(records), len(captions))
    with torch.no_grad():
        for i in range(len(records)):
            image = source.stack([source.get(i)])
            for j, c in enumerate(captions):  # one pair per forward, as VOLTA's evaluation does
                tokens, mask = tokenizer([c])
                naive[i, j] = model.score(image, tokens, mask)[0]
    torch.testing.assert_close(cached, naive, atol=2e-5, rtol=1e-5)


def test_rerank_with_k_all_equals_exhaustive_exactly(tiny_data, tokenizer, eval_records):
    model = cross_encoder(tiny_data, tokenizer, "mixed", k=1)
    un = encode_unpaired_records(model, tokenizer, eval_records[:10], progress=False)
    shortlist = torch.randn(un.n_images, un.n_texts, generator=torch.Generator().manual_seed(0))
    exhaustive = exhaustive_scores(model, un, progress=False)
    r = rerank_scores(model, un, shortlist, k=max(un.n_images, un.n_texts), progress=False)
    assert torch.equal(r.t2i, exhaustive) and torch.equal(r.i2t, exhaustive)
    assert r.ceiling == {"i2t": 100.0, "t2i": 100.0}
    full = cross_metrics(model, un, mode="cross", progress=False)
    rer = cross_metrics(model, un, mode="rerank", k=10_000, shortlist_scores=shortlist, progress=False)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
        assert rer[key] == full[key], key


def test_rerank_scores_only_the_shortlist_and_reports_its_ceiling(tiny_data, tokenizer, eval_records):
    model = cross_encoder(tiny_data, tokenizer, "merged")
    un = encode_unpaired_records(model, tokenizer, eval_records[:10], progress=False)
    n_img, n_txt = un.n_images, un.n_texts
    shortlist = torch.randn(n_img, n_txt, generator=torch.Generator().manual_seed(1))
    k = 3
    r = rerank_scores(model, un, shortlist, k=k, progress=False)
    t2i_sets = [set(shortlist[:, j].topk(k).indices.tolist()) for j in range(n_txt)]
    i2t_sets = [set(shortlist[i].topk(k).indices.tolist()) for i in range(n_img)]
    union = {(i, j) for j in range(n_txt) for i in t2i_sets[j]} | {(i, j) for i in range(n_img) for j in i2t_sets[i]}
    assert r.n_pairs == len(union)
    exhaustive = exhaustive_scores(model, un, progress=False)
    for j in range(n_txt):
        for i in range(n_img):
            want = exhaustive[i, j].item() if i in t2i_sets[j] else float("-inf")
            assert r.t2i[i, j].item() == pytest.approx(want, abs=1e-5)
    t2i_ceiling = 100 * sum(un.text_to_image[j].item() in t2i_sets[j] for j in range(n_txt)) / n_txt
    i2t_ceiling = 100 * sum(any(un.text_to_image[j] == i for j in i2t_sets[i]) for i in range(n_img)) / n_img
    assert r.ceiling == pytest.approx({"t2i": t2i_ceiling, "i2t": i2t_ceiling})
    # Recall never exceeds the ceiling: a query whose match was not shortlisted is a miss.
    m = recall_at_k(r.t2i, un.text_to_image, (k,))
    assert m[f"t2i_r{k}"] <= t2i_ceiling + 1e-9


def test_cli_cross_and_rerank_on_a_region_model(tiny_data, tmp_path):
    raw = tiny_run_config(tiny_data, steps=3)
    raw["model"] |= {"layout": "mixed", "layout_args": {"k": 1}, "image": {"input": "regions"}}
    raw["data"]["regions"] = {"cache_dir": str(tmp_path / "cache")}
    raw["objectives"] = {"contrastive": 1.0, "itm": 1.0, "mlm": 0.5, "mrm_kl": 0.5}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = tmp_path / "run"
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    invoke("train", cfg, "--out", run)
    saved = load_config(run / "config.yaml").model.image
    assert saved.input == "regions" and saved.region_dim and saved.region_classes
    out = invoke("eval", "retrieval", run, "--mode", "cross", "--max-images", "12")
    assert "t2i_r1" in out
    cross = json.loads((run / "eval" / "retrieval_cross.json").read_text())
    assert cross["n_images"] == 12 and cross["pairs_scored"] == 12 * 60
    out = invoke("eval", "retrieval", run, "--mode", "rerank", "--k", "4", "--max-images", "12")
    assert "ceiling" in out
    rer = json.loads((run / "eval" / "retrieval_rerank.json").read_text())
    assert rer["k"] == 4 and rer["pairs_scored"] < cross["pairs_scored"]
    assert rer["t2i_r10"] <= rer["shortlist_ceiling"]["t2i"]
    invoke("eval", "retrieval", run, "--mode", "dual", "--max-images", "12")
    assert json.loads((run / "eval" / "retrieval.json").read_text())["n_images"] == 12
    bad = runner.invoke(app, ["eval", "retrieval", str(run), "--mode", "exhaustive"])
    assert bad.exit_code != 0
