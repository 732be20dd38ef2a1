"""A local Hugging Face GPT-2 as Flamingo's frozen LM: our CausalLM with its converted tensors gives
transformers' logits; Flamingo built on it is that LM at initialisation and trains from the CLI;
unreadable or unsupported directories are one-line errors."""

import json

import pytest
import torch
import yaml
from conftest import invoke, tiny_run_config

from mmtlab.config import ModelConfig
from mmtlab.data.tokenizer import load_tokenizer
from mmtlab.models import CausalLM, Flamingo, hf_lm

transformers = pytest.importorskip("transformers")  # a dev dependency; optional for users

TEXTS = [f"output: {a} {b} on a {c} background" for a in ("a", "two", "three") for b in ("cats", "apples", "stars")
         for c in ("red", "blue", "striped")]  # fmt: skip


def gpt2_dir(path, seed: int = 0, activation: str = "gelu_new"):
    """A tiny random GPT-2 saved as `save_pretrained` does, with a byte-level BPE tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS, trainer)
    torch.manual_seed(seed)
    eos = tok.token_to_id("<|endoftext|>")
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=256, n_embd=32, n_layer=2, n_head=2,
        activation_function=activation, bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save(str(path / "tokenizer.json"))
    return model


def our_lm(path) -> CausalLM:
    f = hf_lm.model_fields(path)
    tok = load_tokenizer(hf_lm.tokenizer_path(path), f["max_len"])
    cfg = ModelConfig(
        arch="lm", width=f["width"], depth=f["depth"], heads=f["heads"], mlp_ratio=f["mlp_ratio"], gelu=f["gelu"],
        text={"max_len": f["max_len"], "vocab_size": tok.vocab_size},
    )  # fmt: skip
    lm = CausalLM(cfg)
    lm.load_state_dict(hf_lm.weights(path), strict=True)
    return lm.eval()


@pytest.mark.parametrize("activation", ["gelu_new", "gelu"])
def test_gpt2_logits_equal_transformers(tmp_path, activation):
    theirs = gpt2_dir(tmp_path, activation=activation)
    ours = our_lm(tmp_path)
    tokens = torch.randint(0, theirs.config.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(tokens).logits
        got = ours(tokens)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    # KV-cached greedy decoding continues a prompt exactly as transformers does.
    prompt = tokens[:1, :8]
    with torch.no_grad():
        want = theirs.generate(prompt, max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours.generate(prompt, max_new_tokens=10, method="greedy")[:, :18], want)


def test_gpt2_tokenizer_plays_every_special_role(tmp_path):
    gpt2_dir(tmp_path)
    tok = load_tokenizer(tmp_path / "tokenizer.json", 32)
    eos = tok.tok.token_to_id("<|endoftext|>")
    assert (tok.pad_id, tok.cls_id, tok.sep_id) == (eos, eos, eos) and tok.special_ids == (eos,)
    ids = tok.tok.encode("output: two cats", add_special_tokens=False).ids
    assert tok.decode(ids).strip() == "output: two cats"


def test_flamingo_on_a_local_gpt2_is_that_lm_at_initialisation(tmp_path):
    theirs = gpt2_dir(tmp_path / "gpt2")
    vision = {"layout": "modality_specific", "width": 24, "depth": 1, "heads": 2, "image": {"size": 32, "patch": 16}}
    f = hf_lm.model_fields(tmp_path / "gpt2")
    vocab = theirs.config.vocab_size
    cfg = ModelConfig.model_validate(
        {
            "arch": "flamingo", "layout": "flamingo", "width": f["width"], "depth": f["depth"], "heads": f["heads"],
            "gelu": f["gelu"], "text": {"max_len": f["max_len"], "vocab_size": vocab},
            "flamingo": {"vision_run": "-", "hf_lm": str(tmp_path / "gpt2"), "latents": 4, "vision": vision},
        }
    )  # fmt: skip
    from mmtlab.models import build_model

    model = Flamingo(cfg)
    vision_weights = build_model(ModelConfig(**vision, text={"vocab_size": 50})).state_dict()
    model.load_frozen(vision_weights, hf_lm.weights(tmp_path / "gpt2"))
    model.eval()
    text = torch.randint(0, vocab, (2, 30), generator=torch.Generator().manual_seed(2))
    media = model.media_tokens(torch.randn(2, 3, 32, 32), torch.tensor([1, 1]))
    with torch.no_grad():
        torch.testing.assert_close(model(text, media), theirs(text).logits, atol=2e-5, rtol=1e-5)


def test_flamingo_with_hf_lm_trains_from_the_command_line(tiny_data, tmp_path):
    gpt2_dir(tmp_path / "gpt2")
    docs = tmp_path / "docs"
    invoke("data", "interleaved", "--data", tiny_data, "--out", docs, "--docs", 40, "--max-chunks", 3)
    vision = tmp_path / "vision"
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(tiny_run_config(tiny_data, steps=2)))
    invoke("train", tmp_path / "v.yaml", "--out", vision)
    raw = tiny_run_config(tiny_data, steps=2, batch_size=4, grad_accum=2)
    raw["data"].update(interleaved=str(docs), mixture={"interleaved": 1.0, "pairs": 0.5}, max_images=3)
    flamingo = {"vision_run": str(vision), "hf_lm": str(tmp_path / "gpt2"), "latents": 4, "gate_init": 0.5}
    raw["model"] = {"arch": "flamingo", "flamingo": flamingo}
    raw["objectives"] = {"caption": 1.0}
    (tmp_path / "fl.yaml").write_text(yaml.safe_dump(raw))
    run = tmp_path / "flamingo"
    invoke("train", tmp_path / "fl.yaml", "--out", run)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    from safetensors.torch import load_file

    from mmtlab.train.checkpoint import latest_checkpoint

    saved = load_file(latest_checkpoint(run) / "model.safetensors")
    source = hf_lm.weights(tmp_path / "gpt2")
    assert torch.equal(saved["text_embed.tok.weight"], source["text_embed.tok.weight"])
    fc1 = "encoder.layers.{}.streams.shared.mlp.fc1.weight"
    assert torch.equal(saved[fc1.format(1)], source[fc1.format(0)])  # LM layer 0 follows the first gated block
    assert load_tokenizer(run / "tokenizer.json").tok.token_to_id("<|endoftext|>") is not None
    out = invoke("eval", "fewshot", run, "--shots", "0,2", "--max-items", 4, "--beams", 2, "--tasks", "vqa")
    assert "vqa" in out


def test_unreadable_hf_directories_are_one_line_errors(tmp_path):
    import subprocess
    import sys

    from mmtlab.config import ConfigError, load_config

    gpt2_dir(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "model.safetensors").rename(tmp_path / "gpt2" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="unpickles"):
        hf_lm.weights(tmp_path / "gpt2")
    cfg = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.yaml").write_text(yaml.safe_dump({"model": {"layout": "modality_specific"}}))
    raw = {
        "data": {"interleaved": str(tmp_path)},
        "model": {"arch": "flamingo", "flamingo": {"vision_run": str(tmp_path / "v"), "hf_lm": str(tmp_path / "gpt2")}},
        "objectives": {"caption": 1.0},
    }
    (tmp_path / "fl.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "mmtlab.cli", "train", str(tmp_path / "fl.yaml"), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "'llama' model; supported: gpt2" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    raw["model"]["flamingo"]["lm_run"] = "runs/lm"
    with pytest.raises(ConfigError, match="exactly one of lm_run"):
        load_config(raw)
