import pytest

from mlmlab.errors import DataError
from mlmlab.tokenizer import MASK, N_SPECIAL, PAD, UNK, UNK_ID, CharTokenizer, build_tokenizer


def test_round_trip_and_specials_first():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.itos[:N_SPECIAL] == [PAD, MASK, UNK]
    assert tok.decode(tok.encode("hello world\n")) == "hello world\n"
    assert tok.encode("lll")[0] >= N_SPECIAL


def test_unseen_characters_become_unk():
    tok = CharTokenizer.from_text("abc")
    ids = tok.encode("abz€")
    assert ids[2] == UNK_ID and ids[3] == UNK_ID
    assert tok.decode(ids) == "ab[UNK][UNK]"


def test_saved_vocab_decodes_identically():
    tok = CharTokenizer.from_text("the quick brown fox ✓\t")
    again = CharTokenizer.from_dict(tok.to_dict())
    assert again.itos == tok.itos
    text = "the fox ✓\t"
    assert again.encode(text) == tok.encode(text)


def test_most_frequent_first_and_deterministic():
    assert CharTokenizer.from_text("bbbaac").chars == ["b", "a", "c"]
    assert CharTokenizer.from_text("ba").chars == CharTokenizer.from_text("ab").chars


def test_bad_vocab_and_kind():
    with pytest.raises(DataError):
        CharTokenizer.from_dict({"kind": "bpe", "chars": "ab"})
    with pytest.raises(DataError):
        build_tokenizer("word", "abc")
