"""What every model family shares: weight initialisation, the vocabulary check, the parameter
count and the output layer tied to the token embedding.

These were copied into each family (model.py, decoder.py, lm.py, data2vec.py, flamingo.py) and had
started to drift; one copy here keeps the families' training bit-for-bit as it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch.nn.functional as F
from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.text import TextEmbedding

INIT_STD = 0.02

# Output projections that write into the residual stream (self-attention, FFN, cross-attention).
# GPT-2 style, they start with std INIT_STD / sqrt(2 * layers) so the stream's variance stays flat
# with depth. Matched by name suffix, so every module called `attn` / `mlp` / `cross` counts (a
# perceiver resampler's or attention pooler's `attn.proj` too).
RESIDUAL_PROJECTIONS = ("attn.proj.weight", "mlp.fc2.weight", "cross.proj.weight")


def init_module(m: nn.Module) -> None:
    """One module's default initialisation (for `nn.Module.apply`): Linear and Embedding weights
    truncated normal with std INIT_STD, Linear biases 0, LayerNorm the identity. Other modules
    (convolutions, bare Parameters) keep what their constructor gave them."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=INIT_STD)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.trunc_normal_(m.weight, std=INIT_STD)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_weights(model: nn.Module, layers: int, extra: Iterable[nn.Parameter] = ()) -> None:
    """Initialise a whole family after its modules are built: `init_module` on every submodule,
    then each of `extra` (bare Parameters, e.g. data2vec's mask embeddings) truncated normal with
    std INIT_STD, then the residual output projections rescaled for `layers` layers.

    The order of the random draws is part of the contract: the same model and seed give the same
    weights as before this helper existed."""
    model.apply(init_module)
    for p in extra:
        nn.init.trunc_normal_(p, std=INIT_STD)
    std = INIT_STD / math.sqrt(2 * max(1, layers))
    for name, p in model.named_parameters():
        if name.endswith(RESIDUAL_PROJECTIONS):
            nn.init.normal_(p, std=std)


def require_vocab(cfg: ModelConfig, source: str = "the tokenizer") -> int:
    """`cfg.text.vocab_size`, or a ValueError saying it is unset and where it comes from."""
    if cfg.text.vocab_size is None:
        raise ValueError(f"model.text.vocab_size is not set (it comes from {source})")
    return cfg.text.vocab_size


def tied_lm_logits(states: Tensor, norm: nn.Module, text_embed: TextEmbedding) -> Tensor:
    """Next-token logits [..., V]: final norm, then the output layer tied to the token embedding
    (GPT-2), so it adds no parameters."""
    return F.linear(norm(states), text_embed.tok.weight)


def count_params(model: nn.Module, trainable_only: bool = False, exclude: tuple[str, ...] = ()) -> int:
    """Number of parameters of `model`; `trainable_only`: those with requires_grad; `exclude`:
    name prefixes left out (data2vec's EMA teacher, a copy of the student's blocks)."""
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if not n.startswith(exclude) and (p.requires_grad or not trainable_only)
    )


class ModelBase(nn.Module):
    """Base class of the model families: `num_params`, counting every parameter but those under
    `untrained_prefixes`."""

    untrained_prefixes: tuple[str, ...] = ()

    def num_params(self, trainable_only: bool = False) -> int:
        return count_params(self, trainable_only, self.untrained_prefixes)
