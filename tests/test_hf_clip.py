"""Hugging Face CLIP in and out: a tiny random transformers CLIPModel imported as a run gives its
embeddings and logits; a run exported with `mmtlab export --format hf-clip` loads back into
transformers with our embeddings; pickles, broken files and models that are not CLIP are one-line
errors."""

import json

import pytest
import torch
import yaml
from conftest import cli_error, invoke, tiny_run_config

from mmtlab.api import load
from mmtlab.models.hf_clip import OPENAI_MEAN, OPENAI_STD

transformers = pytest.importorskip("transformers")  # a dev dependency; optional for users

TEXTS = [f"{a} {b} on {c}" for a in ("a", "two", "three") for b in ("cats", "apples", "stars")
         for c in ("red", "blue", "striped")]  # fmt: skip
ATOL = 2e-5


def clip_tokenizer(path):
    """transformers' own CLIPTokenizer on a tiny vocabulary (bytes, bytes + </w>, a few merges),
    saved as save_pretrained does (tokenizer.json)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    merges = [("a", "t</w>"), ("c", "at</w>"), ("t", "h"), ("th", "e</w>"), ("o", "n</w>"), ("r", "e"), ("re", "d</w>")]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + specials
    tok = transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    tok.save_pretrained(path)
    return tok


def clip_dir(path, seed: int = 0, act: str = "quick_gelu", preprocessor: dict | None = None, **tower):
    """A tiny random CLIPModel saved as save_pretrained does (every tensor perturbed, so LayerNorms
    and biases are not the identity / zero)."""
    path.mkdir(parents=True, exist_ok=True)
    tok = clip_tokenizer(path)
    common = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, hidden_act=act)
    cfg = transformers.CLIPConfig(
        text_config=dict(common, vocab_size=len(tok), max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config={**common, "image_size": 32, "patch_size": 8, **tower},
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path, safe_serialization=True)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def hf_outputs(model, tokens, mask, pixels):
    with torch.no_grad():
        out = model(input_ids=tokens, attention_mask=mask.long(), pixel_values=pixels)
    return out.image_embeds, out.text_embeds, out.logits_per_image


def our_outputs(run, tokens, mask, images):
    model = load(run)
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(tokens, mask)
        return img, txt, model.contrastive.logits(img, txt)


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1  # ours: [-1, 1]


WIDER_VIT = {"hidden_size": 48, "num_attention_heads": 3, "intermediate_size": 192}  # as 768 vs 512 in ViT-B
DEEPER_VIT = {**WIDER_VIT, "num_hidden_layers": 3}  # as ViT-L/14: 24 layers, text 12


@pytest.mark.parametrize(
    "act,stats,vision",
    [
        ("quick_gelu", None, {}),
        ("gelu", ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), {}),
        ("quick_gelu", None, WIDER_VIT),
        ("quick_gelu", None, DEEPER_VIT),
    ],
)
def test_imported_clip_gives_transformers_embeddings_and_logits(tmp_path, act, stats, vision):
    pre = None if stats is None else {"image_mean": list(stats[0]), "image_std": list(stats[1])}
    theirs = clip_dir(tmp_path / "hf", act=act, preprocessor=pre, **vision)
    invoke("import", "hf-clip", tmp_path / "hf", "--out", tmp_path / "run")
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (cfg["text"]["causal"], cfg["text"]["pool"], cfg["image"]["pre_norm"]) == (True, "last", True)
    assert cfg["gelu"] == {"quick_gelu": "quick", "gelu": "exact"}[act]
    own = {"width": 48, "heads": 3, "mlp_ratio": 4.0} if vision else {"width": None, "heads": None, "mlp_ratio": None}
    assert {k: cfg["image"][k] for k in own} == own
    assert cfg["layout_args"] == ({"image_depth": 3} if "num_hidden_layers" in vision else {})
    tok = load(tmp_path / "run").tokenizer
    tokens, mask = tok(TEXTS[:6])
    assert not bool(mask.all())  # captions of different lengths: padding and causal masks together
    hf_tok = transformers.CLIPTokenizer.from_pretrained(tmp_path / "hf")(TEXTS[:6], padding=True)
    assert tokens.tolist() == hf_tok["input_ids"] and mask.long().tolist() == hf_tok["attention_mask"]
    x = images()
    mean, std = (torch.tensor(s)[None, :, None, None] for s in (stats or (OPENAI_MEAN, OPENAI_STD)))
    pixels = ((x + 1) / 2 - mean) / std  # what CLIPImageProcessor gives for the same image
    want = hf_outputs(theirs, tokens, mask, pixels)
    got = our_outputs(tmp_path / "run", tokens, mask, x)
    for name, a, b in zip(("image", "text", "logits"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5, msg=f"{name} embeddings differ")


def test_export_round_trip_loads_in_transformers(tmp_path):
    clip_dir(tmp_path / "hf", seed=1, **DEEPER_VIT)
    invoke("import", "hf-clip", tmp_path / "hf", "--out", tmp_path / "run")
    (tmp_path / "run" / "eval").mkdir()
    (tmp_path / "run" / "eval" / "retrieval.json").write_text(json.dumps({"i2t": {"R@1": 0.25}, "t2i": {"R@1": 0.5}}))
    invoke("export", tmp_path / "run", "--format", "hf-clip", tmp_path / "out")
    back = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    proc = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert proc["image_mean"] == proc["image_std"] == [0.5, 0.5, 0.5]  # our [-1, 1] pixels
    tok = load(tmp_path / "run").tokenizer
    tokens, mask = tok(TEXTS[3:9])
    x = images()
    want = our_outputs(tmp_path / "run", tokens, mask, x)
    got = hf_outputs(back, tokens, mask, x)
    for name, a, b in zip(("image", "text", "logits"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5, msg=f"{name} embeddings differ")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| retrieval | i2t.R@1 | 0.25 |" in card and "causal: true" in card
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path / "out")
    assert fast(TEXTS[3])["input_ids"] == tokens[0][mask[0]].tolist()


def test_a_sharded_checkpoint_imports_the_same(tmp_path):
    model = clip_dir(tmp_path / "hf")
    clip_tokenizer(tmp_path / "sharded")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    invoke("import", "hf-clip", tmp_path / "hf", "--out", tmp_path / "one")
    invoke("import", "hf-clip", tmp_path / "sharded", "--out", tmp_path / "many")
    one, many = load(tmp_path / "one").state_dict(), load(tmp_path / "many").state_dict()
    assert one.keys() == many.keys() and all(torch.equal(one[k], many[k]) for k in one)


def test_export_names_what_is_not_clip(tmp_path, monkeypatch, capsys):
    clip_dir(tmp_path / "hf")
    invoke("import", "hf-clip", tmp_path / "hf", "--out", tmp_path / "run")
    f = tmp_path / "run" / "config.yaml"
    cfg = yaml.safe_load(f.read_text())
    cfg["model"]["text"]["causal"] = False
    cfg["model"]["text"]["pool"] = "mean"
    f.write_text(yaml.safe_dump(cfg))
    code, err = cli_error(monkeypatch, capsys, "export", tmp_path / "run", "--format", "hf-clip", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert "text tower is bidirectional" in err and "model.text.pool: last" in err
    code, err = cli_error(monkeypatch, capsys, "export", tmp_path / "run", "--format", "onnx", tmp_path / "o2")
    assert code == 2 and "only export format is hf-clip" in err


def test_import_refuses_pickles_and_broken_files(tmp_path, monkeypatch, capsys):
    src = tmp_path / "hf"
    clip_dir(src)

    def error(out: str) -> str:
        code, err = cli_error(monkeypatch, capsys, "import", "hf-clip", src, "--out", tmp_path / out)
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    invoke("import", "hf-clip", src, "--out", tmp_path / "r0")
    assert "exists and is not empty" in error("r0")
    weights = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(weights[:1000])
    assert "not a readable safetensors file" in error("r1")
    (src / "model.safetensors").unlink()
    (src / "pytorch_model.bin").write_bytes(b"pickle")
    assert "pytorch_model.bin is not read" in error("r2")
    (src / "model.safetensors").write_bytes(weights)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    assert "not 'clip'" in error("r3")
    (src / "config.json").write_text("{")
    assert "not valid JSON" in error("r4")
    config["vision_config"]["layer_norm_eps"] = 1e-6
    (src / "config.json").write_text(json.dumps(config))
    assert "differ in layer_norm_eps (1e-05 vs 1e-06)" in error("r5")
    del config["vision_config"]["layer_norm_eps"]
    (src / "config.json").write_text(json.dumps(config))
    (src / "tokenizer.json").unlink()
    assert "tokenizer.json is missing" in error("r6")
    assert "no config.json" in error_dir(monkeypatch, capsys, tmp_path)


def error_dir(monkeypatch, capsys, tmp_path) -> str:
    (tmp_path / "empty").mkdir()
    code, err = cli_error(monkeypatch, capsys, "import", "hf-clip", tmp_path / "empty", "--out", tmp_path / "r7")
    assert code == 2
    return err


def clip_shaped(cfg: dict) -> dict:
    """Our tiny run config with CLIP's towers: causal text pooled at [SEP], quick GELU, a pre-LN, a wider ViT."""
    m = cfg["model"]
    m.update(gelu="quick")
    m["text"].update(causal=True, pool="last")
    m["image"].update(pre_norm=True, width=48, heads=3)  # a wider ViT, as in published CLIPs
    return cfg


def test_a_clip_shaped_run_trains_and_exports(tmp_path, tiny_data):
    cfg = tmp_path / "clip.yaml"
    cfg.write_text(yaml.safe_dump(clip_shaped(tiny_run_config(tiny_data, steps=2, checkpoint_every=2))))
    invoke("train", cfg, "--out", tmp_path / "run")
    invoke("export", tmp_path / "run", "--format", "hf-clip", tmp_path / "out")
    back = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    assert back.config.text_config.eos_token_id == 3  # WordPiece's [SEP]: pooled by its position, not argmax
    tok = load(tmp_path / "run").tokenizer
    tokens, mask = tok(["a red apple on a blue background", "two cats", "a star"])
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    want = our_outputs(tmp_path / "run", tokens, mask, x)
    got = hf_outputs(back, tokens, mask, x)
    for name, a, b in zip(("image", "text", "logits"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5, msg=f"{name} embeddings differ")


def test_an_imported_clip_initialises_training(tmp_path, tiny_data):
    clip_dir(tmp_path / "hf")
    invoke("import", "hf-clip", tmp_path / "hf", "--out", tmp_path / "clip")
    imported = yaml.safe_load((tmp_path / "clip" / "config.yaml").read_text())["model"]
    cfg = tiny_run_config(tiny_data, steps=1, lr=1e-9, warmup_steps=0, checkpoint_every=1)
    cfg["model"] = imported
    cfg["train"]["init_from"] = str(tmp_path / "clip")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    invoke("train", tmp_path / "ft.yaml", "--out", tmp_path / "ft")
    before, after = load(tmp_path / "clip"), load(tmp_path / "ft")
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (tmp_path / "hf" / "tokenizer.json").read_text()
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)


def test_init_from_an_hf_directory_says_to_import_it(tmp_path, tiny_data, monkeypatch, capsys):
    clip_dir(tmp_path / "hf")
    cfg = tiny_run_config(tiny_data, steps=1)
    cfg["train"]["init_from"] = str(tmp_path / "hf")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    code, err = cli_error(monkeypatch, capsys, "train", tmp_path / "ft.yaml", "--out", tmp_path / "ft")
    assert code == 2 and "is a Hugging Face model directory, not a run; import it first" in err


def test_clip_switches_belong_to_the_encoder_family():
    from mmtlab.config import RunConfig

    with pytest.raises(ValueError, match="text.causal: only used with model.arch encoder"):
        RunConfig.model_validate({"model": {"arch": "mammut", "text": {"causal": True}}, "objectives": {"caption": 1}})
    with pytest.raises(ValueError, match="image.width: an image tower of its own size needs layout modality_specific"):
        RunConfig.model_validate({"model": {"layout": "merged", "image": {"width": 64}}})
    with pytest.raises(ValueError, match="the itm / mrm heads read both streams at one width"):
        RunConfig.model_validate({"model": {"image": {"width": 64}}, "objectives": {"itm": 1}})
    with pytest.raises(ValueError, match="image.width 64 must be divisible by image.heads 5"):
        RunConfig.model_validate({"model": {"image": {"width": 64, "heads": 5}}})
