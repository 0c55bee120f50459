"""Subword tokenizers (wordpiece, bpe, bytelevel) trained by the `tokenizers` library on test-made text:
special ids, round trips, [UNK], saving, readable pieces, word tables, line-by-line encoding, the
training split, and vocabulary sizes that cannot be had."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from conftest import make_corpus
from mlmlab.corpus import BLOCK_CHARS, TrainText, held_out_blocks, open_corpus
from mlmlab.errors import DataError
from mlmlab.masking_strategies import word_masking
from mlmlab.subword import KINDS, safe_cut, split_lines, train_subword
from mlmlab.token_cache import prepare_corpus
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, SPECIAL_TOKENS, UNK_ID, tokenizer_from_dict

TRAIN_TEXT = make_corpus(2000) + "Singing ringing bringing winging the thing.\n" * 30
VOCAB = {"wordpiece": 150, "bpe": 150, "bytelevel": 380}  # each at most what TRAIN_TEXT can give
SEEN = make_corpus(20, seed=5)  # the same words, other sentences
UNSEEN = "Zebra 日本 ü 😀 Q9"  # characters the training text never holds (Z, 日, ü, 😀, 9)


@pytest.fixture(scope="module")
def toks():
    return {kind: train_subword(kind, [TRAIN_TEXT], VOCAB[kind]) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_keep_their_ids_and_size_is_as_asked(toks, kind):
    tok = toks[kind]
    assert [tok.raw_token(i) for i in range(N_SPECIAL)] == list(SPECIAL_TOKENS)
    assert [tok.token(i) for i in range(N_SPECIAL)] == list(SPECIAL_TOKENS)
    assert tok.vocab_size == VOCAB[kind] and tok.kind == kind
    assert min(tok.encode(SEEN)) >= N_SPECIAL  # real text never encodes to a special id


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_of_seen_text(toks, kind):
    tok = toks[kind]
    ids = tok.encode(SEEN)
    assert len(ids) < len(SEEN) / 2  # pieces, not characters
    if kind == "wordpiece":  # BERT's pre-tokenizer drops whitespace: the words come back space-separated
        assert tok.decode(ids) == " ".join(SEEN.split())
    else:  # spaces, indentation and newlines are pieces: exact
        assert tok.decode(ids) == SEEN
        for text in ("  indented\n\nmore  \n", " leading space", "the [MASK] sat\n"):
            assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", KINDS)
def test_unseen_characters(toks, kind):
    tok = toks[kind]
    ids = tok.encode(UNSEEN)
    if kind == "bytelevel":  # every byte is in the vocabulary: never [UNK], and the text comes back exactly
        assert UNK_ID not in ids and tok.decode(ids) == UNSEEN
    elif kind == "bpe":  # each unseen character is one [UNK]; the rest comes back as written
        assert tok.decode(ids) == "[UNK]ebra [UNK][UNK] [UNK] [UNK] Q[UNK]"
    else:  # wordpiece: a word with an unseen character is one [UNK]; CJK characters are words of their own
        assert tok.decode(ids) == "[UNK] [UNK] [UNK] [UNK] [UNK] [UNK]"
    assert tok.decode(tok.encode("The cat " + UNSEEN + " sat.")).endswith(" sat.")  # seen words unaffected
    if kind == "wordpiece":  # a special token reads as a word of its own
        assert tok.decode(tok.encode("The [MASK] sat on [MASK].")) == "The [MASK] sat on [MASK]."


@pytest.mark.parametrize("kind", KINDS)
def test_saved_and_loaded_tokenizer_gives_identical_ids(toks, kind):
    tok = toks[kind]
    data = tok.to_dict()
    assert set(data) == {"kind", "tokenizer_json"} and data["kind"] == kind
    again = tokenizer_from_dict(data)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size and again.pieces == tok.pieces
    for text in (SEEN, UNSEEN, TRAIN_TEXT[:5000], "the [MASK] sat"):
        assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("kind", KINDS)
def test_pieces_read_as_the_reader_expects(toks, kind):
    tok = toks[kind]
    shown = [tok.token(i) for i in range(N_SPECIAL, tok.vocab_size)]
    assert not any(p.startswith("##") for p in shown)
    assert not any(mark in p for p in shown for mark in ("Ġ", "Ċ", "▁"))
    assert " the" in shown and "ing" in shown  # a word start keeps its space, a continuation is bare
    the, ing = shown.index(" the") + N_SPECIAL, shown.index("ing") + N_SPECIAL
    raw = {"wordpiece": ("the", "##ing"), "bpe": ("▁the", "ing"), "bytelevel": ("Ġthe", "ing")}[kind]
    assert (tok.raw_token(the), tok.raw_token(ing)) == raw
    # joined, the pieces of a sentence read as the sentence (wordpiece: with a leading space)
    sentence = "The cat sat on the mat."
    joined = "".join(tok.token(i) for i in tok.encode(sentence))
    assert joined == (" " + sentence if kind == "wordpiece" else sentence)
    # ids_of takes both spellings, and leaves out what the vocabulary lacks
    assert tok.ids_of([" the"]) == tok.ids_of([raw[0]]) == [the]
    assert tok.ids_of(["ing"]) == tok.ids_of([raw[1]]) == [ing]
    assert tok.ids_of(["[MASK]", "no-such-piece"]) == [MASK_ID]


@pytest.mark.parametrize("kind", KINDS)
def test_mask_in_text_is_the_mask_id(toks, kind):
    tok = toks[kind]
    for text in ("the [MASK] sat", "The cat [MASK].", "[MASK]", "a[MASK]b"):
        ids = tok.encode(text)
        assert ids.count(MASK_ID) == 1, (text, [tok.token(i) for i in ids])
    assert tok.encode("the [MASK] [MASK] sat").count(MASK_ID) == 2
    assert tok.encode("the [mask] sat").count(MASK_ID) == 0  # spelled exactly, as BERT's


@pytest.mark.parametrize("kind", KINDS)
def test_word_tables_group_the_pieces_of_each_word(toks, kind):
    tok = toks[kind]
    gaps, starts = tok.word_tables()
    assert len(gaps) == len(starts) == tok.vocab_size
    assert all(gaps[:N_SPECIAL]) and not any(starts[:N_SPECIAL])
    for i in range(N_SPECIAL, tok.vocab_size):
        piece, raw = tok.token(i), tok.raw_token(i)
        assert gaps[i] == (not piece.strip())
        if kind == "wordpiece":
            assert starts[i] == (not raw.startswith("##"))
        elif piece[:1] == " " and piece.strip():
            assert starts[i]
    if kind == "wordpiece":
        assert not any(gaps[N_SPECIAL:])  # BERT's pre-tokenizer leaves no whitespace pieces
    else:
        assert any(gaps[N_SPECIAL:])  # a space or newline piece of its own
    # on a sentence: one word id per whitespace-separated word, whatever its pieces
    how = word_masking("whole_word", tok)
    text = "the lazy old bringing singing fox jumps over the thing\nbig red house"
    ids, offsets = tok.encode_offsets(text)
    words = how.word_ids(torch.tensor([ids]))[0].tolist()
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

    def owner(start: int, end: int) -> int:  # the whitespace-separated word holding a piece's first non-space
        piece = text[start:end]
        if not piece.strip():
            return -1
        first = start + len(piece) - len(piece.lstrip())
        return next(k for k, (a, b) in enumerate(spans) if a <= first < b)

    assert words == [owner(s, e) for s, e in offsets], [tok.token(i) for i in ids]
    assert max(words) == len(spans) - 1


# --- the cache's line-by-line encoding -----------------------------------------------------------

LINE_TEXTS = [
    "the cat sat\non a mat\n",
    "  indented line\n    more indented\n\tand a tab\n",
    "one\n\n\ntwo\n\n",  # blank lines
    "trailing spaces   \nand tabs\t\t\nend   ",
    "windows\r\nline\r\nends\r\n",
    "no newline at all",
    "\n\nleading newlines",
    "   \n  \n",  # only whitespace
    "ünïcödé café\n日本語 テキスト\n😀 emoji\ne\u0301 combining\n",
    "the [MASK] sat\n[MASK]\n",
    "x\n y\n  z\n\n\n   w",
    "",
]


@pytest.mark.parametrize("kind", KINDS)
def test_line_by_line_encoding_equals_the_whole_text(toks, kind):
    tok = toks[kind]
    rng = random.Random(1)
    parts = ["the", "cat", " ", "  ", "\n", "\n\n", "\r\n", "\t", ".", "é", "e\u0301", "日本", "😀", "Zebra",
             "[MASK]", "   \n", "\n  ", "\u00a0", "\u3000", "\x0b", "\x85", "—"]
    fuzz = ["".join(rng.choice(parts) for _ in range(rng.randint(1, 14))) for _ in range(400)]
    for text in LINE_TEXTS + fuzz + [TRAIN_TEXT[:3000]]:
        lines = split_lines(text)
        assert "".join(lines) == text
        ids, starts = tok.encode_lines(lines)
        whole, offsets = tok.encode_offsets(text)
        assert ids.tolist() == whole, repr(text)
        assert starts.tolist() == [a for a, _ in offsets], repr(text)
        cut = safe_cut(text)
        if cut:
            assert text[cut] == "\n" and not text[cut - 1].isspace()
            assert tok.encode(text[:cut]) + tok.encode(text[cut:]) == whole, repr(text)


def test_safe_cut_and_split_lines_rules():
    assert safe_cut("no newline at all") == 0
    assert safe_cut("a\nb\nc") == 3  # before the last newline that follows a non-space
    assert safe_cut("a\nb  \nc") == 1  # a newline after whitespace is no cut: the whitespace joins it
    assert safe_cut("\n\n") == 0
    assert split_lines("a\n\nb  \nc\r\nd\ne") == ["a", "\n\nb  \nc\r\nd", "\ne"]  # CR is whitespace


# --- the training split ----------------------------------------------------------------------------

def _block_corpus(word: str, in_held_out: bool, n_blocks: int = 60) -> str:
    """A corpus of `n_blocks` blocks of exactly BLOCK_CHARS characters, each ending in a newline:
    test-made sentences, and `word` repeated through three blocks, held-out ones or training ones."""
    held = np.flatnonzero(held_out_blocks(0, n_blocks, 0.05)).tolist()
    train = [b for b in range(n_blocks) if b not in held]
    assert len(held) >= 3
    special = held[:3] if in_held_out else train[5:8]
    lines = iter(make_corpus(30 * n_blocks, seed=3).splitlines())
    blocks = []
    for b in range(n_blocks):
        if b in special:
            body = (word + " ") * (BLOCK_CHARS // (len(word) + 1))
        else:
            body = ""
            while len(body) + 60 < BLOCK_CHARS:
                body += next(lines) + "\n"
        blocks.append(body[: BLOCK_CHARS - 1].ljust(BLOCK_CHARS - 1) + "\n")
    text = "".join(blocks)
    assert len(text) == n_blocks * BLOCK_CHARS
    return text


@pytest.mark.parametrize("kind", KINDS)
def test_training_sees_the_training_split_only(tmp_path, kind):
    word = "borzlax"  # letters the sentences hold, b starting words (big, blue), z inside them (lazy)
    got = {}
    for in_held_out in (True, False):
        path = tmp_path / f"{kind}-{in_held_out}.txt"
        path.write_text(_block_corpus(word, in_held_out), encoding="utf-8")
        texts = "".join(TrainText(open_corpus(str(path)), 0, 0.05, 65, cut=safe_cut))
        assert (word in texts) != in_held_out  # what a trainer is given
        tok, cache = prepare_corpus(str(path), kind=kind, vocab_size={"bytelevel": 330}.get(kind, 120), valid_fraction=0.05)
        assert cache.n_chars == 60 * BLOCK_CHARS
        got[in_held_out] = tok
    spelled = {"wordpiece": word, "bpe": "▁" + word, "bytelevel": "Ġ" + word}[kind]
    assert got[False].ids_of([spelled]), "control: a word repeated in training blocks is one piece"
    assert got[True].ids_of([spelled]) == [] and not [r for r in got[True].raw if word[:4] in r or word[-4:] in r]
    assert len(got[True].encode("a " + word)) > 2  # held out: only pieces of it
    assert UNK_ID not in got[True].encode(word)


# --- vocabulary sizes that cannot be had -----------------------------------------------------------

@pytest.mark.parametrize("kind,size,words", [
    ("wordpiece", 3, "too small"), ("bpe", 2, "too small"), ("bytelevel", 258, "too small"),
    ("wordpiece", 20, "smaller than this corpus's alphabet"), ("bpe", 20, "smaller than this corpus's alphabet"),
    ("wordpiece", 100_000, "larger than this corpus can give"), ("bpe", 100_000, "larger than this corpus can give"),
    ("bytelevel", 100_000, "larger than this corpus can give"),
])
def test_vocabulary_size_that_cannot_be_had_is_one_line(kind, size, words):
    with pytest.raises(DataError) as error:
        train_subword(kind, [TRAIN_TEXT], size)
    message = str(error.value)
    assert words in message and "\n" not in message and f"data.vocab_size = {size}" in message


def test_vocabulary_size_error_through_the_data_command(tmp_path, capsys):
    from mlmlab.cli import main

    path = tmp_path / "corpus.txt"
    path.write_text(TRAIN_TEXT, encoding="utf-8")
    assert main(["data", str(path), "--tokenizer", "wordpiece", "--vocab-size", "100000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "larger than this corpus can give" in err
    assert not list(tmp_path.glob("**/*.tmp"))
