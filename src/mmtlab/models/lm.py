"""A causal language model (GPT-style): token + position embeddings, causal text layers (layout
`layouts.lm`), a final norm and an output layer tied to the token embedding.

It is Flamingo's frozen LM: `mmtlab train configs/runs/lm.yaml` trains one on the text of the
interleaved documents, and models/flamingo.py loads its weights into the LM layers of its own
layout (same parameter names, other layer indices).
"""

from __future__ import annotations

from torch import Tensor, nn

from mmtlab.config import ModelConfig
from mmtlab.models.common import ModelBase, init_weights, require_vocab, tied_lm_logits
from mmtlab.models.fusion import FusionEncoder, build_layout
from mmtlab.models.generate import generate
from mmtlab.models.layers import KVCache
from mmtlab.models.text import TextEmbedding


class CausalLM(ModelBase):
    contrastive = None  # the training loop asks every family for these heads
    mlm = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        vocab = require_vocab(cfg)
        self.cfg = cfg
        self.text_embed = TextEmbedding(vocab, cfg.width, cfg.text.max_len)
        self.layout = build_layout(cfg.layout, cfg.depth, **cfg.layout_args)
        self.encoder = FusionEncoder(self.layout, cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.gelu)
        self.norm = nn.LayerNorm(cfg.width)
        init_weights(self, len(self.layout))  # layout `lm` has no cross-attention

    def lm_logits(self, states: Tensor) -> Tensor:
        return tied_lm_logits(states, self.norm, self.text_embed)

    def forward(self, tokens: Tensor) -> Tensor:
        """Next-token logits [B, L, V]. Right padding needs no mask: causal queries never see it."""
        h = self.encoder({"text": self.text_embed(tokens)}, causal_text=True)["text"]
        return self.lm_logits(h)

    def sequence_logits(self, batch) -> Tensor:
        """The caption objective's pass (objectives.StepContext.caption)."""
        return self(batch.tokens)

    def decode(self, context, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """A models/generate.py step (no context)."""
        offset = 0 if cache is None else cache.length
        h = self.encoder({"text": self.text_embed(tokens, offset)}, causal_text=True, cache=cache)["text"]
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.lm_logits(h)

    def generate(self, prompt: Tensor, *, max_new_tokens: int = 32, **kwargs) -> Tensor:
        t = self.cfg.text
        max_new = min(max_new_tokens, t.max_len - prompt.shape[1])
        return generate(self.decode, None, prompt, max_new_tokens=max_new, eos_id=t.sep_id, pad_id=t.pad_id, **kwargs)
