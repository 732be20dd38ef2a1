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
