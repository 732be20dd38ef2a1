"""Hugging Face BERT, ViT and ViLT as our encoder configs: tiny random transformers models saved
with save_pretrained, imported with `mmtlab import hf-bert|hf-vit|hf-vilt`, give transformers'
hidden states and pooled outputs (padding included); BERT's vocab.txt tokenises as transformers
does; an imported BERT starts a merged model through train.init_from; what does not fit is a
one-line error."""

import json

import pytest
import torch
import yaml
from conftest import cli_error, invoke, tiny_run_config

from mmtlab.api import load

transformers = pytest.importorskip("transformers")  # a dev dependency; optional for users

ATOL = 1e-5
# Special tokens away from ids 0-4 (bert-base-uncased has [UNK] 100, [CLS] 101, ...): ids come from
# the vocabulary, never from our defaults.
VOCAB = ["[PAD]", "a", "two", "three", "[UNK]", "cat", "##s", "red", "blue", "on", "star", "apple", "the", "st",
         "##rip", "##ed", "[CLS]", "[SEP]", "[MASK]", ",", ".", "dog", "##gy", "under", "café"]  # fmt: skip
TEXTS = ["Two cats on a striped star.", "a red apple", "the doggy under three blue stars, a cat!", "Café"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def perturbed(model):
    """Every tensor moved off its initialisation, so LayerNorms, biases and the type embeddings
    are not the identity / zero."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def write_vocab(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return path / "vocab.txt"


def bert_dir(path, seed=0, tokenizer_json=True, **cfg):
    vocab = write_vocab(path)
    if tokenizer_json:  # what BertTokenizer(Fast).save_pretrained writes: tokenizer.json
        transformers.BertTokenizer(vocab=str(vocab)).save_pretrained(path)
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=len(VOCAB), max_position_embeddings=40, **{**TINY, **cfg})
    model = perturbed(transformers.BertModel(config))
    model.save_pretrained(path, safe_serialization=True)
    return model


def vit_dir(path, seed=0, preprocessor=None, **cfg):
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = perturbed(transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=8, **{**TINY, **cfg})))
    model.save_pretrained(path, safe_serialization=True)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return model


def vilt_dir(path, seed=0, **cfg):
    write_vocab(path)
    torch.manual_seed(seed)
    config = transformers.ViltConfig(
        vocab_size=len(VOCAB), max_position_embeddings=40, image_size=32, patch_size=8, **{**TINY, **cfg}
    )
    model = perturbed(transformers.ViltModel(config))
    model.save_pretrained(path, safe_serialization=True)
    return model


def images(n=4, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3)) * 2 - 1  # ours: [-1, 1]


def tokens_of(run):
    tokens, mask = load(run).tokenizer(TEXTS)
    assert not bool(mask.all())  # captions of different lengths: padded
    return tokens, mask


def pooled(linear, h):
    return torch.tanh(linear(h[:, 0]))  # BERT's pooler: dense + tanh on the first token


@pytest.mark.parametrize("layout", ["merged", "modality_specific"])
def test_imported_bert_gives_transformers_states(tmp_path, layout):
    theirs = bert_dir(tmp_path / "hf")
    invoke("import", "hf-bert", tmp_path / "hf", "--out", tmp_path / "run", "--layout", layout)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (cfg["post_norm"], cfg["norm_eps"], cfg["text"]["embed_norm"], cfg["layout"]) == (True, 1e-12, True, layout)
    tokens, mask = tokens_of(tmp_path / "run")
    ours = load(tmp_path / "run")
    with torch.no_grad():
        want = theirs(input_ids=tokens, attention_mask=mask.long())
        got = ours(tokens=tokens, text_mask=mask)["text"]
        torch.testing.assert_close(got, want.last_hidden_state, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(pooled(ours.itm.text_pool, got), want.pooler_output, atol=ATOL, rtol=1e-5)
    owner = "shared" if layout == "merged" else "text"
    names = set(json.loads((tmp_path / "run" / "imported.json").read_text())["tensors"])
    assert f"encoder.layers.1.streams.{owner}.attn.qkv.weight" in names and "image_embed.proj.weight" not in names


@pytest.mark.parametrize("tokenizer_json", [True, False])
def test_bert_vocabulary_tokenises_as_transformers(tmp_path, tokenizer_json):
    bert_dir(tmp_path / "hf", tokenizer_json=tokenizer_json)
    invoke("import", "hf-bert", tmp_path / "hf", "--out", tmp_path / "run")
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # pure Python

    tok = load(tmp_path / "run").tokenizer
    tokens, mask = tok(TEXTS)
    theirs = BertTokenizerLegacy(str(tmp_path / "hf" / "vocab.txt"))(TEXTS, padding=True)
    assert tokens.tolist() == theirs["input_ids"] and mask.long().tolist() == theirs["attention_mask"]
    assert VOCAB.index("[UNK]") in tokens[2].tolist()  # "!" is not in the vocabulary
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 16, 17, 18)
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]["text"]
    assert (cfg["cls_id"], cfg["sep_id"], cfg["vocab_size"]) == (16, 17, len(VOCAB))


@pytest.mark.parametrize(
    "stats,layout",
    [(None, "modality_specific"), (((0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), "modality_specific"), (None, "merged")],
)
def test_imported_vit_gives_transformers_states(tmp_path, stats, layout):
    pre = None if stats is None else {"image_mean": list(stats[0]), "image_std": list(stats[1])}
    theirs = vit_dir(tmp_path / "hf", preprocessor=pre)
    write_vocab(tmp_path / "vocab")
    out = tmp_path / "run"
    invoke("import", "hf-vit", tmp_path / "hf", "--out", out, "--tokenizer", tmp_path / "vocab", "--layout", layout)
    ours = load(tmp_path / "run")
    x = images()
    mean, std = (torch.tensor(s)[None, :, None, None] for s in (stats or ((0.5,) * 3, (0.5,) * 3)))
    pixels = ((x + 1) / 2 - mean) / std  # what the image processor gives for the same image
    with torch.no_grad():
        want = theirs(pixel_values=pixels)
        got = ours(images=x)["image"]
        torch.testing.assert_close(got, want.last_hidden_state, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(pooled(ours.itm.image_pool, got), want.pooler_output, atol=ATOL, rtol=1e-5)
    assert ours.cfg.layout == layout and not ours.cfg.post_norm and ours.cfg.norm_eps == 1e-12


def vilt_outputs(model, tokens, mask, pixels, seed=0):
    """ViltModel's states with its image tokens put back in grid order: with every patch kept,
    ViLT still draws them in a random order (torch.multinomial without replacement); the same
    seed gives visual_embed's patch_index of that order."""
    torch.manual_seed(seed)
    with torch.no_grad():
        _, _, (index, _) = model.embeddings.visual_embed(pixels, torch.ones(len(pixels), 32, 32, dtype=torch.long))
        torch.manual_seed(seed)
        out = model(input_ids=tokens, attention_mask=mask.long(), pixel_values=pixels)
    n = tokens.shape[1]
    text, image = out.last_hidden_state[:, :n], out.last_hidden_state[:, n:]
    order = index[..., 0] * 4 + index[..., 1]  # grid position of each sampled patch (4 x 4 grid)
    assert sorted(order[0].tolist()) == list(range(16))  # every patch, none sampled twice
    patches = torch.empty_like(image[:, 1:])
    patches.scatter_(1, order[..., None].expand_as(patches), image[:, 1:])
    return text, torch.cat([image[:, :1], patches], 1), out.pooler_output


def test_imported_vilt_gives_transformers_states(tmp_path):
    theirs = vilt_dir(tmp_path / "hf")
    invoke("import", "hf-vilt", tmp_path / "hf", "--out", tmp_path / "run")
    ours = load(tmp_path / "run")
    assert ours.cfg.layout == "merged" and all(s.weights == "shared" for s in ours.layout)
    tokens, mask = tokens_of(tmp_path / "run")
    x = images()
    text, image, pooler = vilt_outputs(theirs, tokens, mask, x)  # ViltImageProcessor: mean = std = 0.5
    with torch.no_grad():
        got = ours(images=x, tokens=tokens, text_mask=mask)
    torch.testing.assert_close(got["text"], text, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(got["image"], image, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(pooled(ours.itm.text_pool, got["text"]), pooler, atol=ATOL, rtol=1e-5)


def test_an_imported_vilt_is_single_stream(tmp_path):
    """Every text token's output depends on every patch, and every patch's on every real token."""
    vilt_dir(tmp_path / "hf", seed=2)
    invoke("import", "hf-vilt", tmp_path / "hf", "--out", tmp_path / "run")
    model = load(tmp_path / "run")
    tokens, mask = tokens_of(tmp_path / "run")
    text, pad = model.embed_text(tokens, mask)
    image, _ = model.embed_image(images())
    text, image = text.detach().requires_grad_(), image.detach().requires_grad_()
    out = model.encoder({"text": text, "image": image}, {"text": pad})
    for q, k in (("text", image), ("image", text)):
        n = out[q].shape[1]
        for j in range(n):  # the gradient of query token j's output with respect to every key token
            (g,) = torch.autograd.grad(out[q][0, j].sum(), k, retain_graph=True)
            reached = g[0].abs().sum(-1) > 0
            want = torch.ones_like(reached) if q == "text" else mask[0]
            assert reached.tolist() == want.tolist(), (q, j)


def test_an_imported_bert_starts_a_merged_model(tmp_path, tiny_data):
    bert_dir(tmp_path / "hf")
    invoke("import", "hf-bert", tmp_path / "hf", "--out", tmp_path / "bert")
    cfg = tiny_run_config(tiny_data, steps=1, lr=1e-9, warmup_steps=0, checkpoint_every=1)
    model = yaml.safe_load((tmp_path / "bert" / "config.yaml").read_text())["model"]
    model["image"] = {"size": 64, "patch": 16}  # the run's own image side (BERT has none)
    cfg["model"] = model
    cfg["objectives"] = {"mlm": 1.0, "itm": 1.0}
    cfg["train"]["init_from"] = str(tmp_path / "bert")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(cfg))
    printed = invoke("train", tmp_path / "ft.yaml", "--out", tmp_path / "ft")
    imported = json.loads((tmp_path / "bert" / "imported.json").read_text())["tensors"]
    assert f"initialised {len(imported)} tensors" in printed and "encoder.layers.0-1.streams.shared" in printed
    before, after = load(tmp_path / "bert").state_dict(), load(tmp_path / "ft").state_dict()
    for name in imported:
        torch.testing.assert_close(after[name], before[name], atol=1e-6, rtol=0, msg=name)
    # The run's random tensors (its image side, the heads BERT lacks) are not copied.
    for name in ("image_embed.cls", "itm.classifier.weight", "mlm.dense.weight"):
        assert not torch.allclose(after[name], before[name], atol=1e-3), name


def test_imports_name_what_does_not_fit(tmp_path, monkeypatch, capsys):
    def error(fmt, src, *extra):
        out = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        code, err = cli_error(monkeypatch, capsys, "import", fmt, src, "--out", out, *extra)
        assert code == 2 and len(err.splitlines()) == 1, err
        return err

    bert_dir(tmp_path / "bert")
    vit_dir(tmp_path / "vit")
    vilt_dir(tmp_path / "vilt", max_image_length=8)
    assert "describes a 'bert' model, not 'vit'" in error("hf-vit", tmp_path / "bert", "--tokenizer", tmp_path / "bert")
    assert "a ViT has no vocabulary; give the run's with --tokenizer" in error("hf-vit", tmp_path / "vit")
    assert "max_image_length 8 samples patches" in error("hf-vilt", tmp_path / "vilt")
    vit_config = json.loads((tmp_path / "vit" / "config.json").read_text())
    (tmp_path / "vit" / "config.json").write_text(json.dumps({**vit_config, "pooler_act": "relu"}))
    assert "a pooler other than dense + tanh" in error("hf-vit", tmp_path / "vit", "--tokenizer", tmp_path / "bert")
    assert "layout 'coattention' (supported: merged, modality_specific" in error(
        "hf-bert", tmp_path / "bert", "--layout", "coattention"
    )
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert "hidden_act 'relu'" in error("hf-bert", tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "vocab_size": 99}))
    assert "the tokenizer has 25 tokens but the model's vocab_size is 99" in error("hf-bert", tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    assert "lacks tensor 'encoder.layer.2." in error("hf-bert", tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    assert "more than the 1 layers of its config.json" in error("hf-bert", tmp_path / "bert")
    (tmp_path / "bert" / "config.json").write_text(json.dumps(config))
    (tmp_path / "bert" / "model.safetensors").unlink()
    assert "pytorch_model.bin is not read" in error("hf-bert", tmp_path / "bert")


def test_block_switches_belong_to_the_encoder_family():
    from mmtlab.config import RunConfig

    with pytest.raises(ValueError, match="post_norm: only used with model.arch encoder"):
        RunConfig.model_validate({"model": {"arch": "mammut", "post_norm": True}, "objectives": {"caption": 1}})
    with pytest.raises(ValueError, match="text.embed_norm: only used with model.arch encoder"):
        RunConfig.model_validate({"model": {"arch": "lm", "text": {"embed_norm": True}}, "objectives": {"caption": 1}})
    with pytest.raises(ValueError, match="norm_eps"):
        RunConfig.model_validate({"model": {"norm_eps": 0}})


def test_a_bert_shaped_model_is_not_exported_as_clip(tmp_path, monkeypatch, capsys):
    bert_dir(tmp_path / "hf")
    invoke("import", "hf-bert", tmp_path / "hf", "--out", tmp_path / "run", "--layout", "modality_specific")
    code, err = cli_error(monkeypatch, capsys, "export", tmp_path / "run", "--format", "hf-clip", tmp_path / "out")
    assert code == 2 and "BERT-style LayerNorms" in err


@pytest.mark.parametrize("fmt", ["hf-bert", "hf-vilt"])
def test_a_masked_lm_checkpoint_brings_its_head(tmp_path, fmt):
    """BertForMaskedLM / ViltForMaskedLM: the base model's tensors under "bert." / "vilt.", and the
    masked-LM head, which is ours (its decoder tied to the word embeddings, as in transformers)."""
    write_vocab(tmp_path / "hf")
    torch.manual_seed(4)
    if fmt == "hf-bert":
        config = transformers.BertConfig(vocab_size=len(VOCAB), max_position_embeddings=40, **TINY)
        theirs = perturbed(transformers.BertForMaskedLM(config))
    else:
        config = transformers.ViltConfig(
            vocab_size=len(VOCAB), max_position_embeddings=40, image_size=32, patch_size=8, **TINY
        )
        theirs = perturbed(transformers.ViltForMaskedLM(config))
    theirs.save_pretrained(tmp_path / "hf", safe_serialization=True)
    invoke("import", fmt, tmp_path / "hf", "--out", tmp_path / "run")
    ours = load(tmp_path / "run")
    tokens, mask = tokens_of(tmp_path / "run")
    x = images()
    with torch.no_grad():
        inputs = {"input_ids": tokens, "attention_mask": mask.long()}
        want = theirs(**inputs, **({} if fmt == "hf-bert" else {"pixel_values": x})).logits
        got = ours.mlm_logits(ours(tokens=tokens, text_mask=mask, images=None if fmt == "hf-bert" else x)["text"])
    torch.testing.assert_close(got, want, atol=ATOL, rtol=1e-5)
    assert "mlm.dense.weight" in json.loads((tmp_path / "run" / "imported.json").read_text())["tensors"]
