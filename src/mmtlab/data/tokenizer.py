"""WordPiece tokenizer (HF `tokenizers`) trained on the pretraining captions, or loaded from a file.

Special tokens are looked up by name, so any BERT-style tokenizer.json works; ours puts them at
ids 0-4 ([PAD] [UNK] [CLS] [SEP] [MASK]). A GPT-2-style byte-level BPE (a local Hugging Face causal
LM's, models/hf_lm.py) has one special token, <|endoftext|>, which then plays every role: it
starts a document, ends a chunk and pads (padding is told apart by length, never by id).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import Tensor

from mmtlab.io import atomic_write_text
from mmtlab.rundir import RunFileError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
END_OF_TEXT = "<|endoftext|>"  # GPT-2's only special token


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_len: int = 32):
        self.tok = tokenizer
        self.max_len = max_len
        ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing and tokenizer.token_to_id(END_OF_TEXT) is not None and len(missing) == len(SPECIAL_TOKENS):
            ids = dict.fromkeys(SPECIAL_TOKENS, tokenizer.token_to_id(END_OF_TEXT))
        elif missing:
            raise ValueError(
                f"tokenizer lacks special tokens {missing}; a BERT-style WordPiece vocabulary or a GPT-2-style "
                f"one with {END_OF_TEXT} is needed"
            )
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[t] for t in SPECIAL_TOKENS)
        self.special_ids = tuple(dict.fromkeys(ids.values()))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def __call__(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token ids [B, L] and a boolean mask (True = real token), padded to the longest, <= max_len."""
        return self._pad([self._truncate(e.ids) for e in self.tok.encode_batch(list(texts))])

    def with_spans(self, texts: list[str], spans: list[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
        """`self(texts)` and [B, L] True at the tokens that overlap the character span
        [start, end) of their text (special tokens never do; a span cut off by max_len has none)."""
        encs = self.tok.encode_batch(list(texts))
        ids, mask = self._pad([self._truncate(e.ids) for e in encs])
        inside = torch.zeros_like(mask)
        special = set(self.special_ids)
        for i, (e, (start, end)) in enumerate(zip(encs, spans, strict=True)):
            for j, ((a, b), t) in enumerate(zip(e.offsets[: self.max_len - 1], e.ids, strict=False)):
                inside[i, j] = t not in special and a < end and b > start
        return ids, mask, inside

    def _truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_len:
            return ids
        return ids[: self.max_len - 1] + [self.sep_id]  # keep the [SEP] end marker after truncation

    def _pad(self, rows: list[list[int]]) -> tuple[Tensor, Tensor]:
        n = max(len(r) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True  # by length: CLIP's end token is also its padding id
        return ids, mask

    def decode(self, ids: list[int] | Tensor) -> str:
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        return self.tok.decode(ids, skip_special_tokens=True)

    def save(self, path: str | Path) -> None:
        """Written atomically: a full disk leaves the old file or none, never a truncated one."""
        atomic_write_text(path, self.tok.to_str(pretty=True))


# Every letter and digit, word-initial and '##' continuing, whatever the training text holds: a
# vocabulary learned on scene captions must still spell "0", "zebra" or "q" (not [UNK]) when a
# fine-tune or a question brings them.
BASE_ALPHABET = frozenset(c for ch in "abcdefghijklmnopqrstuvwxyz0123456789" for c in (ch, "##" + ch))


def _learn_pieces(word_counts: dict[str, int], budget: int) -> list[str]:
    """BPE-style merges with WordPiece's '##' continuation pieces, ties broken by the pieces' text.

    We learn the vocabulary ourselves because the `tokenizers` WordPiece trainer breaks ties in
    hash-map order, which makes the vocabulary differ from run to run.
    """
    words = sorted(word_counts)
    splits = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    freq = [word_counts[w] for w in words]
    pieces = sorted({p for s in splits for p in s} | BASE_ALPHABET)
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(i: int, sign: int) -> None:
        s = splits[i]
        for pair in zip(s, s[1:]):
            pair_count[pair] += sign * freq[i]
            if sign > 0:
                where[pair].add(i)

    for i in range(len(words)):
        add(i, +1)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    while len(pieces) < budget and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or -neg <= 0:
            continue  # stale heap entry
        a, b = pair
        merged = a + b[2:]
        pieces.append(merged)
        for i in sorted(where.pop(pair)):
            s = splits[i]
            if not any(x == a and y == b for x, y in zip(s, s[1:])):
                continue
            add(i, -1)
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            splits[i] = out
            add(i, +1)
            for p in zip(out, out[1:]):
                heapq.heappush(heap, (-pair_count[p], p))
        pair_count.pop(pair, None)
    return pieces


def train_wordpiece(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """A BERT-style WordPiece tokenizer whose vocabulary is learned deterministically from `texts`."""
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces = _learn_pieces(dict(counts), vocab_size - len(SPECIAL_TOKENS))
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *pieces])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: marks them, keeps their ids
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def wordpiece_from_vocab(path: str | Path, lowercase: bool = True) -> Tokenizer:
    """BERT's tokenizer from its vocab.txt (one token a line, the line number its id), as
    transformers' BertTokenizerFast builds it: BERT normalisation (lower-casing and accent
    stripping if `lowercase`), BERT pre-tokenisation, WordPiece, [CLS] ... [SEP]."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")  # not splitlines: tokens may hold \x1c, \u2028
    vocab: dict[str, int] = {}
    for i, line in enumerate(lines[:-1] if lines[-1] == "" else lines):
        vocab[line.rstrip("\r")] = i  # as transformers: a repeated token keeps its last id
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path} lacks BERT's special tokens {missing}")
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def load_tokenizer(path: str | Path, max_len: int = 32) -> TextTokenizer:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"no tokenizer at {path}")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise RunFileError(f"{path}: not a valid tokenizer.json ({' '.join(str(e).split())[:200]})") from None
    return TextTokenizer(tok, max_len)
