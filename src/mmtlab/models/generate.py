"""Autoregressive decoding for any causal text model: greedy, beam search and nucleus sampling,
with or without a KV cache.

A model plugs in with one function, `step(context, tokens, cache) -> logits [B, n, V]`:
- without a cache (`cache=None`), `tokens` is the whole prefix and the step recomputes it;
- with a `KVCache`, `tokens` holds only the tokens the cache has not seen (the prompt on the first
  call, then one token per call) and the step extends the cache.
`context` is what the text is conditioned on (image tokens, media features ...): a tensor, or a
tuple / dict of tensors, batch first, or None. Beam search repeats it once per beam. The model
decides what its cache holds (decoder.py: each layer's self-attention keys/values, and the
cross-attention keys/values of the image, computed on the first step only).

    ids = generate(model.decode, image_tokens, prompt, max_new_tokens=20, eos_id=sep, pad_id=pad,
                   method="beam", num_beams=3)

Rows that have produced `eos_id` are filled with `pad_id` afterwards. `continuation_logprobs`
scores given continuations of one prompt instead (classification by likelihood).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmtlab.models.layers import KVCache

StepFn = Callable[[Any, Tensor, KVCache | None], Tensor]
Method = Literal["greedy", "beam", "nucleus"]


def map_batch(context: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Apply `fn` to every tensor of a context (tensor, tuple/list or dict of tensors, or None)."""
    if context is None:
        return None
    if isinstance(context, Tensor):
        return fn(context)
    if isinstance(context, dict):
        return {k: map_batch(v, fn) for k, v in context.items()}
    if isinstance(context, tuple | list):
        return type(context)(map_batch(v, fn) for v in context)
    raise TypeError(f"generation context must be tensors (or tuples/dicts of them), got {type(context).__name__}")


class Decoder:
    """Feeds a step function incrementally (KV cache) or with the whole prefix every time."""

    def __init__(self, step: StepFn, context: Any, use_cache: bool):
        self.step, self.context = step, context
        self.cache = KVCache() if use_cache else None
        self.fed = 0  # tokens of the sequence the cache has seen

    def next_logits(self, seq: Tensor) -> Tensor:
        """Logits [B, V] for the token after `seq` [B, T]."""
        if self.cache is None:
            logits = self.step(self.context, seq, None)
        else:
            logits = self.step(self.context, seq[:, self.fed :], self.cache)
            self.fed = seq.shape[1]
        return logits[:, -1].float()

    def reorder(self, rows: Tensor) -> None:
        # Beams are only reordered within their own batch item, so the context stays valid as is.
        if self.cache is not None:
            self.cache.reorder(rows)


def nucleus_choice(logits: Tensor, top_p: float, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample from the smallest set of tokens whose probability mass reaches `top_p` (Holtzman et
    al. 2020, "The Curious Case of Neural Text Degeneration"), after dividing logits by `temperature`."""
    probs = F.softmax(logits / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # mass before a token is below p: the first always stays
    choice = torch.multinomial(sorted_p * keep, 1, generator=generator)
    return order.gather(-1, choice).squeeze(-1)


def _one_by_one(decoder: Decoder, prompt: Tensor, max_new: int, eos_id: int | None, pad_id: int, choose) -> Tensor:
    seq = prompt
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(max_new):
        tok = choose(decoder.next_logits(seq))
        tok = tok.masked_fill(done, pad_id)
        seq = torch.cat([seq, tok[:, None]], dim=1)
        if eos_id is not None:
            done |= tok == eos_id
            if bool(done.all()):
                break
    return seq


def _beam_search(
    decoder: Decoder,
    prompt: Tensor,
    max_new: int,
    eos_id: int | None,
    pad_id: int,
    num_beams: int,
    length_penalty: float,
) -> Tensor:
    """Keep the `num_beams` best continuations by summed log-probability. A finished beam (it
    produced `eos_id`) stays in the beam, extended by `pad_id` at no cost, and competes with the
    live ones; at the end each item's best beam by sum / length ** length_penalty is returned."""
    b, k = prompt.shape[0], num_beams
    device = prompt.device
    decoder.context = map_batch(decoder.context, lambda t: t.repeat_interleave(k, dim=0))
    seq = prompt.repeat_interleave(k, dim=0)
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -torch.inf  # all beams start identical: only the first may expand at step one
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    base = torch.arange(b, device=device)[:, None] * k
    for _ in range(max_new):
        logp = F.log_softmax(decoder.next_logits(seq), dim=-1)
        vocab = logp.shape[-1]
        if bool(finished.any()):
            logp[finished] = -torch.inf
            logp[finished, pad_id] = 0.0
        total = (scores.reshape(-1, 1) + logp).reshape(b, k * vocab)
        scores, flat = total.topk(k, dim=1)
        rows = (base + torch.div(flat, vocab, rounding_mode="floor")).reshape(-1)
        tok = (flat % vocab).reshape(-1)
        seq = torch.cat([seq[rows], tok[:, None]], dim=1)
        lengths = lengths[rows] + (~finished[rows]).float()
        finished = finished[rows]
        if eos_id is not None:
            finished |= tok == eos_id
        decoder.reorder(rows)
        if bool(finished.all()):
            break
    normalised = scores.reshape(-1) / lengths.clamp(min=1.0) ** length_penalty
    best = normalised.reshape(b, k).argmax(dim=1)
    return seq.reshape(b, k, -1)[torch.arange(b, device=device), best]


@torch.no_grad()
def generate(
    step: StepFn,
    context: Any,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    eos_id: int | None,
    pad_id: int = 0,
    method: Method = "greedy",
    num_beams: int = 3,
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    length_penalty: float = 1.0,
) -> Tensor:
    """The prompt [B, P] (same length in every row, no padding) and its continuation: [B, P + T],
    T <= max_new_tokens (decoding stops early once every row has produced `eos_id`)."""
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, length >= 1] token ids, got shape {tuple(prompt.shape)}")
    decoder = Decoder(step, context, use_cache)
    if method == "greedy":
        return _one_by_one(decoder, prompt, max_new_tokens, eos_id, pad_id, lambda z: z.argmax(-1))
    if method == "nucleus":
        if not 0 < top_p <= 1 or temperature <= 0:
            raise ValueError(f"nucleus sampling needs 0 < top_p <= 1 and temperature > 0, got {top_p}, {temperature}")
        choose = lambda z: nucleus_choice(z, top_p, temperature, generator)
        return _one_by_one(decoder, prompt, max_new_tokens, eos_id, pad_id, choose)
    if method == "beam":
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        return _beam_search(decoder, prompt, max_new_tokens, eos_id, pad_id, num_beams, length_penalty)
    raise ValueError(f"unknown decoding method {method!r}; choose greedy, beam or nucleus")


@torch.no_grad()
def continuation_logprobs(step: StepFn, context: Any, prompt: Tensor, candidates: list[list[int]]) -> Tensor:
    """Log-probability [C] of each candidate token sequence following one prompt [1, P]: the prompt
    runs once, its KV cache is shared by all candidates (close-ended classification by likelihood)."""
    if prompt.shape[0] != 1 or not candidates or not all(candidates):
        raise ValueError("continuation_logprobs: one prompt row and non-empty candidates are needed")
    cache = KVCache()
    first = F.log_softmax(step(context, prompt, cache)[:, -1].float(), dim=-1)  # [1, V]
    n, width = len(candidates), max(len(c) for c in candidates)
    tokens = torch.zeros(n, width, dtype=torch.long, device=prompt.device)
    for i, c in enumerate(candidates):
        tokens[i, : len(c)] = torch.tensor(c, device=prompt.device)
    logp = first.expand(n, -1)[:, None]
    if width > 1:  # later tokens: one cached pass over each candidate's own prefix (padding comes after)
        cache.expand(n)
        rest = step(map_batch(context, lambda t: t.expand(n, *t.shape[1:])), tokens[:, :-1], cache)
        logp = torch.cat([logp, F.log_softmax(rest.float(), dim=-1)], dim=1)
    picked = logp.gather(-1, tokens[..., None]).squeeze(-1)  # [C, width]
    real = torch.arange(width, device=prompt.device)[None, :] < torch.tensor([len(c) for c in candidates])[:, None]
    return (picked * real).sum(1)
