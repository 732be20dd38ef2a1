"""VQA training data: (image, "question: ... answer: A") items whose loss covers only the answer.

The collator tokenises prompt + answer together and marks the answer tokens and the closing
[SEP] in `Batch.target_mask`; the caption objective then ignores the prompt. WordPiece splits on
whitespace and punctuation first, so the prompt's tokens are a prefix of the whole text's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmtlab.data.emoji_scenes.vqa import Question, make_questions
from mmtlab.data.pairs import Batch, ImageCache, to_float
from mmtlab.data.tokenizer import TextTokenizer


class VQAPairs(Dataset):
    """One item per question of the records' images (same interface as ImageTextPairs)."""

    def __init__(self, records: Sequence, image_size: int, max_pairs: int | None = None, seed: int = 0, images=None):
        self.records = records
        questions = make_questions(records, seed)
        self.questions: list[Question] = questions[:max_pairs] if max_pairs else questions
        self.empty_captions = 0
        self.images = images if images is not None else ImageCache(records, image_size)

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> tuple[Tensor | None, Question, int]:
        q = self.questions[i]
        return self.images.get(q.record), q, q.record

    def captions(self) -> Iterator[str]:
        for q in self.questions:
            yield q.text


def prompt_lengths(tokenizer: TextTokenizer, prompts: list[str]) -> Tensor:
    """Tokens of each prompt without its closing [SEP]: where the answer starts."""
    _, mask = tokenizer(prompts)
    return mask.sum(1) - 1


class VQACollator:
    def __init__(self, tokenizer: TextTokenizer):
        self.tokenizer = tokenizer

    def __call__(self, items: list[tuple[Tensor | None, Question, int]]) -> Batch:
        good = [it for it in items if it[0] is not None]
        if not good:
            raise RuntimeError("every image in a batch failed to decode; check the dataset's image files")
        tokens, mask = self.tokenizer([q.text for _, q, _ in good])
        start = prompt_lengths(self.tokenizer, [q.prompt for _, q, _ in good])
        target = mask & (torch.arange(tokens.shape[1])[None, :] >= start[:, None])
        images = to_float(torch.stack([im for im, _, _ in good]))
        index = torch.tensor([ri for _, _, ri in good], dtype=torch.long)
        return Batch(images, tokens, mask, index, skipped=len(items) - len(good), target_mask=target)
