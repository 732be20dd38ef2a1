"""A local Hugging Face GPT-2-format causal LM as Flamingo's frozen LM (`model.flamingo.hf_lm`).

Reads what `save_pretrained` writes: config.json, model.safetensors (or sharded, with its
index.json) and tokenizer.json. Nothing is downloaded and `transformers` is not needed: GPT-2's
block is our pre-LN `lm` layer (tests/test_hf_lm.py checks logits against transformers'
GPT2LMHeadModel), so its tensors are renamed into CausalLM's names and Conv1D weights
transposed. pytorch_model.bin is refused: loading it means unpickling an untrusted file.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from torch import Tensor

SUPPORTED = ("gpt2",)
GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "exact"}

# GPT-2 module (after h.N.) -> CausalLM module (after encoder.layers.N.streams.shared.); the 2-D
# weights among them are Conv1D's [in, out] and are transposed to nn.Linear's [out, in].
_LAYER = {
    "ln_1": "ln_attn",
    "attn.c_attn": "attn.qkv",
    "attn.c_proj": "attn.proj",
    "ln_2": "ln_mlp",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_TOP = {
    "wte.weight": "text_embed.tok.weight",
    "wpe.weight": "text_embed.pos",
    "ln_f.weight": "norm.weight",
    "ln_f.bias": "norm.bias",
}
_IGNORED = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of old checkpoints


def _where(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model.flamingo.hf_lm: {path} is not a Hugging Face model directory (no config.json)")
    return path


def model_fields(path: str | Path) -> dict:
    """The ModelConfig fields of the LM at `path`: width, depth, heads, MLP ratio, GELU, max_len."""
    path = _where(path)
    c = json.loads((path / "config.json").read_text())
    kind = c.get("model_type")
    if kind not in SUPPORTED:
        raise ValueError(
            f"model.flamingo.hf_lm: {path} holds a {kind!r} model; supported: {', '.join(SUPPORTED)} "
            f"(or train one: configs/runs/lm.yaml)"
        )
    act = c.get("activation_function", "gelu_new")
    unsupported = [
        k for k in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention") if c.get(k)
    ]
    if act not in GELU or not c.get("scale_attn_weights", True) or unsupported:
        raise ValueError(f"model.flamingo.hf_lm: unsupported GPT-2 options in {path / 'config.json'}: "
                         f"{unsupported or [f'activation_function={act}']}")  # fmt: skip
    if abs(c.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"model.flamingo.hf_lm: layer_norm_epsilon {c['layer_norm_epsilon']} (only 1e-5 is supported)")
    if not c.get("tie_word_embeddings", True):
        raise ValueError("model.flamingo.hf_lm: the output layer must be tied to the token embedding")
    width = c["n_embd"]
    return {
        "width": width,
        "depth": c["n_layer"],
        "heads": c["n_head"],
        "mlp_ratio": (c.get("n_inner") or 4 * width) / width,
        "gelu": GELU[act],
        "max_len": c["n_positions"],
    }


def tokenizer_path(path: str | Path) -> Path:
    tok = _where(path) / "tokenizer.json"
    if not tok.exists():
        raise FileNotFoundError(f"model.flamingo.hf_lm: {tok} is missing; a fast tokenizer's save_pretrained writes it")
    return tok


def weights(path: str | Path) -> dict[str, Tensor]:
    """The LM's tensors under CausalLM's parameter names (models/lm.py)."""
    path = _where(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise FileNotFoundError(
            f"model.flamingo.hf_lm: no model.safetensors in {path} (found {found}); pytorch_model.bin is not "
            f"read because loading it unpickles the file: convert it with save_pretrained(safe_serialization=True)"
        )
    raw: dict[str, Tensor] = {}
    for f in files:
        raw.update(load_file(str(path / f)))
    out = {}
    for name, t in raw.items():
        name = name.removeprefix("transformer.")
        if name == "lm_head.weight" or name.split(".", 2)[-1] in _IGNORED:
            continue  # tied to wte (model_fields checks), or a buffer
        if name in _TOP:
            out[_TOP[name]] = t
        elif name.startswith("h."):
            i, rest = name[2:].split(".", 1)
            module, kind = rest.rsplit(".", 1)
            if module not in _LAYER or kind not in ("weight", "bias"):
                raise ValueError(f"model.flamingo.hf_lm: unexpected GPT-2 tensor {name}")
            ours = f"encoder.layers.{i}.streams.shared.{_LAYER[module]}.{kind}"
            out[ours] = t.t().contiguous() if t.dim() == 2 else t
        else:
            raise ValueError(f"model.flamingo.hf_lm: unexpected GPT-2 tensor {name}")
    return {k: v.float() for k, v in out.items()}
