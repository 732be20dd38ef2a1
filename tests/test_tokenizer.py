import pytest
import torch

from mmtlab.data.tokenizer import TextTokenizer, load_tokenizer, train_wordpiece

CAPTIONS = [
    "a grinning face to the left of a red apple",
    "two cats on a blue background",
    "stock photo of a smiling cat face, cute clipart",
    "in this image i can see a dog and uh a tree",
] * 20


def test_round_trip_and_specials(tmp_path):
    tok = TextTokenizer(train_wordpiece(CAPTIONS, vocab_size=200), max_len=32)
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    ids, mask = tok(["Two cats on a blue background", "a dog"])
    assert ids[0, 0] == tok.cls_id and ids[1, 0] == tok.cls_id
    assert ids.shape[0] == 2 and mask[1].sum() < mask[0].sum()
    assert tok.decode(ids[0]) == "two cats on a blue background"
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    again = load_tokenizer(path, max_len=32)
    assert torch.equal(again(["two cats on a blue background"])[0], tok(["two cats on a blue background"])[0])


def test_truncation_keeps_end_marker():
    tok = TextTokenizer(train_wordpiece(CAPTIONS, vocab_size=200), max_len=6)
    ids, mask = tok(["a grinning face to the left of a red apple"])
    assert ids.shape == (1, 6) and ids[0, -1] == tok.sep_id and mask.all()


def test_training_is_deterministic():
    a = train_wordpiece(CAPTIONS, vocab_size=200).to_str()
    b = train_wordpiece(CAPTIONS, vocab_size=200).to_str()
    assert a == b


def test_bad_tokenizer_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "none.json")


def test_with_spans_marks_the_phrase_tokens_and_respects_truncation():
    """The tokens flagged inside a character span decode to the phrase (word pieces and all); a
    span cut off by max_len keeps only the tokens that survive, and [SEP] is never inside."""
    caption = "a grinning face to the left of a red apple"
    spans = [(0, 15), (33, 42), (19, 27)]  # "a grinning face", "red apple", "the left"
    full = TextTokenizer(train_wordpiece(CAPTIONS, vocab_size=110), max_len=32)
    ids, mask, inside = full.with_spans([caption] * 3, spans)
    assert torch.equal(ids, full([caption] * 3)[0]) and torch.equal(mask, full([caption] * 3)[1])
    pieces = [full.tok.id_to_token(int(t)) for t in ids[0, mask[0]]]
    assert any(p.startswith("##") for p in pieces)  # the phrases span several word pieces
    for row, (start, end) in enumerate(spans):
        assert full.decode(ids[row][inside[row]]) == caption[start:end]
    n = int(inside[2].nonzero()[-1])  # max_len cuts off the last piece of "the left" (for [SEP])
    survivors = full.decode(ids[2][inside[2]][:-1])  # "the left" less its last piece
    assert "the left".startswith(survivors) and len(survivors) < len("the left")
    short = TextTokenizer(full.tok, max_len=n + 1)
    ids, mask, inside = short.with_spans([caption] * 3, spans)
    assert ids.shape[1] == n + 1 and (ids[:, -1] == short.sep_id).all()
    assert full.decode(ids[0][inside[0]]) == "a grinning face"  # wholly inside the limit
    assert not inside[1].any()  # "red apple" is cut off: no tokens
    assert full.decode(ids[2][inside[2]]) == survivors


def test_every_letter_and_digit_is_spellable():
    """Captions without digits or a 'q' still give a vocabulary that spells them: a fine-tune's
    answers ("0", "2") and a user's words never become [UNK]."""
    tok = TextTokenizer(train_wordpiece(CAPTIONS, vocab_size=200), max_len=32)
    ids, mask = tok(["0 12 quiz zebra"])
    assert tok.unk_id not in ids[0, mask[0]].tolist()
    assert tok.decode(ids[0, mask[0]]) == "0 12 quiz zebra"
