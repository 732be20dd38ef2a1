"""emoji-scenes VQA: questions from boxes and labels, answer-only targets, accuracy by type."""

import torch

from mmtlab.data.emoji_scenes.vqa import QUESTION_TYPES, Question, make_questions, questions_for_image
from mmtlab.data.tokenizer import TextTokenizer, train_wordpiece
from mmtlab.data.vqa import VQACollator, VQAPairs
from mmtlab.eval.vqa import vqa_accuracy

NAMES = ["cat", "red apple", "rose", "dog", "beans"]


def ask(boxes, labels, seed=0, pool=(0, 1, 2, 3, 4)):
    return {q.qtype: q for q in questions_for_image(0, 7, boxes, labels, NAMES, pool, seed)}


def test_questions_follow_the_boxes_and_labels():
    # a big cat on the left, a small apple on the right, apart
    qs = ask([[0, 10, 30, 40], [44, 20, 56, 32]], [0, 1])
    assert qs["count"].answer == "two"
    assert qs["identity"].answer == "cat"  # the largest
    rel = qs["relation"]
    expected = "left" if rel.question.startswith("where is the cat") else "right"
    assert rel.answer == expected and rel.question in (
        "where is the cat relative to the red apple?",
        "where is the red apple relative to the cat?",
    )
    above = ask([[20, 0, 40, 15], [20, 40, 40, 60]], [2, 3])["relation"]
    assert above.answer == ("above" if above.question.startswith("where is the rose") else "below")
    overlap = ask([[10, 10, 40, 40], [15, 15, 45, 45]], [0, 3])["relation"]  # the dog is drawn last: in front
    assert overlap.answer == ("behind" if overlap.question.startswith("where is the cat") else "in front")


def test_presence_answers_are_true_and_balanced():
    answers = []
    for seed in range(40):
        q = ask([[0, 0, 20, 20], [30, 30, 50, 50], [0, 30, 20, 50]], [0, 1, 0], seed=seed)["presence"]
        named = next(n for n in NAMES if f" {n} in" in q.question)
        assert q.answer == ("yes" if named in ("cat", "red apple") else "no")
        answers.append(q.answer)
    assert 10 < answers.count("yes") < 30
    assert ask([[0, 0, 20, 20], [30, 30, 50, 50], [0, 30, 20, 50]], [0, 1, 0])["count"].answer == "three"


def test_single_sprite_images_have_no_relation_question():
    assert set(ask([[0, 0, 20, 20]], [4])) == {"count", "presence", "identity"}


def test_questions_of_a_real_split_are_deterministic_and_cover_every_type(tiny_data):
    from mmtlab.config import load_config
    from mmtlab.data.sources import load_split

    records = load_split(load_config({"data": {"root": str(tiny_data)}}).data, "test")
    a, b = make_questions(records), make_questions(records)
    assert a == b and {q.qtype for q in a} == set(QUESTION_TYPES)
    assert all(q.text == f"question: {q.question} answer: {q.answer}" for q in a)


def test_collator_targets_exactly_the_answer_tokens(tiny_data):
    from mmtlab.config import load_config
    from mmtlab.data.sources import load_split

    records = load_split(load_config({"data": {"root": str(tiny_data)}}).data, "val")
    pairs = VQAPairs(records, 32, max_pairs=24)
    tok = TextTokenizer(train_wordpiece(list(pairs.captions()), 200), 32)
    batch = VQACollator(tok)([pairs[i] for i in range(len(pairs))])
    for row, (_, q, _) in enumerate(pairs[i] for i in range(len(pairs))):
        target_ids = batch.tokens[row][batch.target_mask[row]].tolist()
        assert target_ids[-1] == tok.sep_id
        assert tok.decode(target_ids) == tok.decode(tok([q.answer])[0][0].tolist())
        prompt_ids = tok([q.prompt])[0][0].tolist()[:-1]
        assert batch.tokens[row, : len(prompt_ids)].tolist() == prompt_ids  # the prompt is a prefix
    assert not batch.target_mask[:, 0].any()


def test_accuracy_is_exact_match_by_type():
    qs = [
        Question(0, "count", "how many?", "two"),
        Question(0, "count", "how many?", "three"),
        Question(1, "identity", "what?", "red apple"),
        Question(1, "presence", "is there?", "no"),
    ]
    r = vqa_accuracy(qs, ["Two", "four", "red apple.", None])
    assert r["accuracy"] == 100 * 2 / 3 and r["count_accuracy"] == 50 and r["identity_accuracy"] == 100
    assert "presence_accuracy" not in r and r["n_questions"] == 3
    assert r["majority_answer"]["count"] == 50


def test_vqa_batches_are_padded_only_after_the_answer(tiny_data):
    from mmtlab.config import load_config
    from mmtlab.data.sources import load_split

    records = load_split(load_config({"data": {"root": str(tiny_data)}}).data, "val")
    pairs = VQAPairs(records, 32, max_pairs=8)
    tok = TextTokenizer(train_wordpiece(list(pairs.captions()), 200), 32)
    batch = VQACollator(tok)([pairs[i] for i in range(8)])
    assert torch.equal(batch.text_mask, batch.tokens != tok.pad_id)
    assert (batch.target_mask <= batch.text_mask).all()
