"""Flamingo end to end on tiny runs: interleaved shards, a causal LM, a dual encoder, Flamingo on
a weighted mixture, few-shot evaluation; and the interleaved readers on both public layouts."""

import functools
import json
import math

import pytest
import yaml
from conftest import invoke, tiny_run_config

import mmtlab
from mmtlab.data.interleaved import Document, read_documents
from mmtlab.train.checkpoint import latest_checkpoint


def write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_interleaved_shards_in_both_layouts_and_corrupt_lines(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = [
        {"images": ["a.png", None, "/abs/b.png", None], "texts": [None, "one", None, "two"]},
        {"text_list": ["intro", "about a"], "image_info": [{"image_name": "a.png", "matched_text_index": 1}]},
        {"images": ["a.png"], "texts": ["both set"]},  # corrupt: a position with image and text
        {"something": "else"},  # corrupt: neither layout
    ]
    (tmp_path / "docs-0.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    docs, corrupt = read_documents(tmp_path)
    assert corrupt == 3
    a = tmp_path / "a.png"
    assert docs[0].items == [a, "one", tmp_path / "/abs/b.png", "two"]
    assert docs[1].items == ["intro", a, "about a"]  # MMC4: the image goes before its matched text
    assert Document(docs[0].items).render() == "<image>one<|endofchunk|><image>two<|endofchunk|>"


def test_documents_are_reused_with_the_same_parameters_and_rebuilt_without_stale_shards(tiny_data, tmp_path):
    from mmtlab.data.interleaved import build_interleaved, shard_files

    out = tmp_path / "docs"
    first = build_interleaved(out, tiny_data, docs=30, max_chunks=3)
    assert first["documents"] == 30 and "skipped" not in first
    (out / "docs-00007.jsonl").write_text("{}\n")  # a shard a larger earlier build left behind
    assert build_interleaved(out, tiny_data, docs=30, max_chunks=3)["skipped"]  # a study's rerun builds nothing
    docs, corrupt = read_documents(out)
    assert (len(docs), corrupt) == (30, 1)  # untouched: the stray shard's line is still there
    again = build_interleaved(out, tiny_data, docs=20, max_chunks=3)
    assert "skipped" not in again and [f.name for f in shard_files(out)] == ["docs-00000.jsonl"]
    docs, corrupt = read_documents(out)
    assert (len(docs), corrupt) == (20, 0)


@pytest.fixture(scope="module")
def image_runs(tiny_data, tmp_path_factory):
    """Interleaved image documents, a dual encoder (the frozen vision) and a causal LM, tiny."""
    tmp_path = tmp_path_factory.mktemp("image-runs")
    docs = tmp_path / "docs"
    out = invoke("data", "interleaved", "--data", tiny_data, "--out", docs, "--docs", 60, "--max-chunks", 4)
    assert "60 documents (" in out and " images) " in out
    vision = tmp_path / "vision"
    invoke("train", write(tmp_path / "v.yaml", tiny_run_config(tiny_data, steps=2)), "--out", vision)

    lm_raw = tiny_run_config(tiny_data, steps=4)
    lm_raw["data"]["interleaved"] = str(docs)
    lm_raw["model"] = {"arch": "lm", "width": 32, "depth": 2, "heads": 2, "text": {"max_len": 128}}
    lm_raw["objectives"] = {"caption": 1.0}
    lm = tmp_path / "lm"
    invoke("train", write(tmp_path / "lm.yaml", lm_raw), "--out", lm)
    return docs, vision, lm


def flamingo_config(data_root, docs, vision, lm, **train) -> dict:
    raw = tiny_run_config(data_root, steps=2, batch_size=4, grad_accum=2, **train)
    raw["data"].update(interleaved=str(docs), mixture={"interleaved": 1.0, "pairs": 0.5}, max_images=3)
    raw["model"] = {"arch": "flamingo", "flamingo": {"vision_run": str(vision), "lm_run": str(lm), "latents": 4}}
    raw["objectives"] = {"caption": 1.0}
    return raw


def test_flamingo_pipeline_from_the_command_line(tiny_data, image_runs, tmp_path, monkeypatch):
    docs, vision, lm = image_runs
    run = tmp_path / "flamingo"
    invoke("train", write(tmp_path / "fl.yaml", flamingo_config(tiny_data, docs, vision, lm)), "--out", run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and lines[-1]["loss"] > 0

    # The frozen parts in the trained checkpoint are exactly the LM's and the vision encoder's.
    from safetensors.torch import load_file

    flam = load_file(latest_checkpoint(run) / "model.safetensors")
    lm_w = load_file(latest_checkpoint(lm) / "model.safetensors")
    v_w = load_file(latest_checkpoint(vision) / "model.safetensors")
    assert (flam["text_embed.tok.weight"] == lm_w["text_embed.tok.weight"]).all()
    assert (
        flam["encoder.layers.1.streams.shared.attn.qkv.weight"]
        == lm_w["encoder.layers.0.streams.shared.attn.qkv.weight"]
    ).all()
    assert (flam["vision.image_embed.proj.weight"] == v_w["image_embed.proj.weight"]).all()
    assert (flam["vision.norm.weight"] == v_w["norm.image.weight"]).all()
    assert not (flam["encoder.layers.0.streams.shared.cross_gate"] == 0).all()  # the gates trained

    out = invoke("eval", "fewshot", run, "--shots", "0,2", "--max-items", 6, "--beams", 2)
    import mmtlab.eval.runs as fewshot

    gates = []
    evaluate = fewshot.evaluate_fewshot

    def recording(model, *args, **kwargs):
        gates.append([float(p.detach()) for n, p in model.named_parameters() if n.endswith("_gate")])
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(fewshot, "evaluate_fewshot", recording)
    invoke("eval", "fewshot", run, "--shots", "2", "--max-items", 4, "--tasks", "vqa", "--blind")
    assert gates and gates[0] and all(g == 0.0 for g in gates[0]), "--blind must evaluate with every gate closed"
    assert json.loads((run / "eval" / "fewshot_blind.json").read_text())["blind"]
    assert "caption" in out and "classify" in out
    result = json.loads((run / "eval" / "fewshot.json").read_text())
    assert set(result["vqa"]["scores"]) == {"0", "2"}
    assert (run / "eval" / "fewshot.png").stat().st_size > 0

    # eval gates reads the trained gates from the checkpoint: tanh of each, in block order
    out = invoke("eval", "gates", run)
    g = json.loads((run / "eval" / "gates.json").read_text())
    blocks = sorted(k for k in flam if k.endswith("cross_gate"))
    assert g["tanh"]["cross_gate"] == pytest.approx([math.tanh(float(flam[k])) for k in blocks], abs=1e-6)
    assert g["cross_mean_abs"] == pytest.approx(sum(abs(v) for v in g["tanh"]["cross_gate"]) / len(blocks))
    assert "mean |tanh|" in out
    model = mmtlab.load(run)
    assert model.num_params(trainable_only=True) < model.num_params()
    from mmtlab.eval.runs import EvalError, eval_probe

    with pytest.raises(
        EvalError,
        match="eval probe needs a model.arch encoder or data2vec run, not 'flamingo'; .* evaluated with: fewshot",
    ):
        eval_probe(run)  # was a TypeError deep in the probe

    # Held-out loss by the images the documents see: the trained gates are open, so images move it;
    # closed gates make own, shuffled and no images the same frozen LM, exactly.
    worth = result["image_worth"]
    assert worth["all"]["tokens"] > 0 and set(worth) - {"all"} <= {"caption", "vqa", "classify"}
    assert worth["all"]["own"] != worth["all"]["shuffled"]
    from mmtlab.data.sources import load_split
    from mmtlab.eval.fewshot import image_worth

    model.close_gates()
    closed = image_worth(model, model.tokenizer, load_split(model.run_config.data, "test"), n_docs=12, progress=False)
    assert closed["all"]["own"] == closed["all"]["shuffled"] == closed["all"]["none"]


def test_flamingo_continues_on_clip_documents_from_the_command_line(tiny_data, image_runs, tmp_path, monkeypatch):
    """An image Flamingo run, continued (train.init_from) on interleaved clip documents of an
    emoji-video build, then few-shot on its clips: the time embeddings past frame 0, zero in the
    image run, now trained."""
    pytest.importorskip("av")
    from safetensors.torch import load_file

    docs, vision, lm = image_runs
    image_run = tmp_path / "flamingo"
    invoke("train", write(tmp_path / "fl.yaml", flamingo_config(tiny_data, docs, vision, lm)), "--out", image_run)
    video = tmp_path / "emoji-video"
    invoke("data", "build", "emoji-video", "--out", video, "--size", 12, "--eval-size", 6, "--image-size", 32)
    clip_docs = tmp_path / "clip-docs"
    out = invoke("data", "interleaved", "--data", video, "--out", clip_docs, "--docs", 20, "--max-chunks", 3)
    assert "20 documents (" in out and " clips) " in out

    raw = flamingo_config(video, clip_docs, vision, lm, init_from=str(image_run))
    raw["data"]["train_split"] = "train"  # the pairs half: one-clip caption documents
    run = tmp_path / "flamingo-video"
    invoke("train", write(tmp_path / "flv.yaml", raw), "--out", run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 2 and lines[-1]["loss"] > 0 and lines[-1]["skipped_images"] == 0
    before = load_file(latest_checkpoint(image_run) / "model.safetensors")["resampler.time"]
    after = load_file(latest_checkpoint(run) / "model.safetensors")["resampler.time"]
    assert not before[1:].any(), "an image run never trains the time embeddings past frame 0"
    assert after[1:].any(dim=1).all()

    # (2 shots: this tiny LM's tokenizer splits the video captions into many pieces; 12 held-out
    # documents, not 240: the test is of the path, and each clip decodes per document)
    import mmtlab.eval.runs as fewshot

    monkeypatch.setattr(fewshot, "image_worth", functools.partial(fewshot.image_worth, n_docs=12))
    invoke("eval", "fewshot", run, "--data", video, "--tasks", "caption,vqa", "--shots", "0,2",
           "--max-items", 4, "--beams", 2)  # fmt: skip
    result = json.loads((run / "eval" / "fewshot.json").read_text())
    assert set(result) >= {"caption", "vqa", "image_worth"} and set(result["vqa"]["scores"]) == {"0", "2"}
    assert result["image_worth"]["all"]["tokens"] > 0
