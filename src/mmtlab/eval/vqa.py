"""Generative VQA evaluation: the model continues "question: ... answer:" greedily and the answer
counts if it equals the reference after normalisation (lower-case words, punctuation dropped).
Accuracy is reported overall and by question type, next to the majority-answer rate of each type
(the accuracy of always giving that type's most frequent answer on this split).

The MaMMUT recipe measures VQA after fine-tuning the pretrained model on the training split's
questions: train/finetune.py `finetune_vqa`, composed with this by mmtlab/evaluate.py.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

import torch

from mmtlab.data.emoji_scenes.vqa import QUESTION_TYPES, Question
from mmtlab.data.pairs import ImageCache
from mmtlab.data.tokenizer import TextTokenizer
from mmtlab.eval.captioning import decode_continuations, normalize
from mmtlab.progress import track


def prompt_ids(tokenizer: TextTokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt without the closing [SEP] (the model continues after it)."""
    tokens, mask = tokenizer([prompt])
    return tokens[0, : int(mask.sum()) - 1].tolist()


@torch.no_grad()
def answer_questions(
    model,
    tokenizer: TextTokenizer,
    records: Sequence,
    questions: Sequence[Question],
    *,
    batch_size: int = 128,
    max_new_tokens: int = 16,  # a one-word answer spelt in pieces: 'disappeared' is 11 letters
    device: str | torch.device = "cpu",
    progress: bool = True,
    source=None,
) -> list[str | None]:
    """Greedy answers, in question order; None where the image could not be decoded. Prompts of
    equal token length are decoded together, so batches need no padding. `source`: the model's
    inputs per record (data.loader.image_source: pixels or video clips); default pixels."""
    model.eval()
    cache = ImageCache(records, model.cfg.image.size) if source is None else source
    by_length: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for qi, q in enumerate(questions):
        ids = prompt_ids(tokenizer, q.prompt)
        by_length[len(ids)].append((qi, ids))
    batches = [group[s : s + batch_size] for group in by_length.values() for s in range(0, len(group), batch_size)]
    answers: list[str | None] = [None] * len(questions)
    for batch in track(batches, "answering", enabled=progress):
        kept = [(qi, ids, img) for qi, ids in batch if (img := cache.get(questions[qi].record)) is not None]
        if not kept:
            continue
        images = cache.stack([img for _, _, img in kept]).to(device)
        prompt = torch.tensor([ids for _, ids, _ in kept], dtype=torch.long, device=device)
        out = model.generate(images, prompt, max_new_tokens=max_new_tokens, method="greedy")
        for (qi, _, _), text in zip(kept, decode_continuations(tokenizer, out, prompt.shape[1])):
            answers[qi] = text
    return answers


def vqa_accuracy(questions: Sequence[Question], answers: Sequence[str | None]) -> dict:
    """Exact-match accuracy (%) overall and by type, with each type's majority-answer rate."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for q, a in zip(questions, answers, strict=True):
        if a is not None:
            hits[q.qtype].append(normalize(a) == normalize(q.answer))
    scored = [h for v in hits.values() for h in v]
    if not scored:
        raise ValueError("nothing to evaluate: no question with a decodable image")
    majority = {}
    for t in hits:
        counts = Counter(normalize(q.answer) for q, a in zip(questions, answers) if q.qtype == t and a is not None)
        majority[t] = 100.0 * counts.most_common(1)[0][1] / sum(counts.values())
    # emoji-scenes' types in their usual order, then any others (a video build's) as they come
    types = [t for t in QUESTION_TYPES if t in hits] + [t for t in hits if t not in QUESTION_TYPES]
    result = {"accuracy": 100.0 * sum(scored) / len(scored)}
    result.update({f"{t}_accuracy": 100.0 * sum(hits[t]) / len(hits[t]) for t in types})
    result["majority_answer"] = majority
    result["n_questions"] = len(scored)
    result["n_by_type"] = {t: len(hits[t]) for t in types}
    return result


def evaluate_vqa(model, tokenizer, records, questions, *, examples: int = 12, **kwargs) -> dict:
    answers = answer_questions(model, tokenizer, records, questions, **kwargs)
    result = vqa_accuracy(questions, answers)
    result["skipped_questions"] = sum(a is None for a in answers)
    result["examples"] = [
        {"type": q.qtype, "question": q.question, "answer": q.answer, "predicted": a}
        for q, a in list(zip(questions, answers))[:examples]
    ]
    return result
