"""Prediction on subword models: the alignment of characters to subwords (no model needed), and
`mlmlab predict` / the predictor on a tiny WordPiece run, alone and beside a char run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, make_corpus, run_cli
from mlmlab.cli import main
from mlmlab.errors import NotationError
from mlmlab.notation import parse
from mlmlab.predict.alignment import align
from mlmlab.predict.results import compare_rows, disagreements, glyph
from mlmlab.subword import train_subword
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, CharTokenizer
from mlmlab.vocab import KEEP, MASKED, RANDOM, VISIBLE
from subword_helpers import train_pair

SIZES = {"wordpiece": 120, "bpe": 120, "bytelevel": 300}


@pytest.fixture(scope="module")
def tokenizers():
    lines = make_corpus().splitlines(keepends=True)
    return {kind: train_subword(kind, lines, size) for kind, size in SIZES.items()}


def covered(aligned, slots) -> list[int]:
    return [i for i, u in enumerate(aligned.units) if set(u.slots) & set(slots)]


# --- alignment: characters to subwords ------------------------------------------------------------


def test_char_alignment_is_the_identity():
    tok = CharTokenizer.from_text("the cat sat")
    m = parse("the {cat} [MASK]")
    a = align(m, tok)
    assert not a.subword and len(a) == len(m)
    assert [u.span for u in a.units] == [(i, i + 1) for i in range(len(m))]
    assert a.hidden == m.hidden
    assert a.units[len(m) - 1].shown_id == MASK_ID and a.units[len(m) - 1].answer is None
    assert [a.units[i].answer for i in (4, 5, 6)] == list("cat")
    assert a.notes() == []


@pytest.mark.parametrize("kind", SIZES)
def test_mask_is_one_subword_with_no_answer(tokenizers, kind):
    tok = tokenizers[kind]
    m = parse("The dog sat on [MASK] mat.")
    a = align(m, tok)
    assert a.subword
    assert len(a.hidden) == 1
    unit = a.units[a.hidden[0]]
    assert unit.span == (m.hidden[0], m.hidden[0] + 1)  # the [MASK] slot, one slot for six letters
    assert unit.shown_id == MASK_ID and unit.answer is None and unit.kind == MASKED
    # The visible rest reads as the tokenizer reads the sentence with nothing hidden.
    plain = [u.token_id for u in a.units if not u.hidden]
    assert plain == tok.encode("The dog sat on ") + tok.encode(" mat.")


@pytest.mark.parametrize("kind", SIZES)
def test_braces_hide_every_subword_they_overlap(tokenizers, kind):
    tok = tokenizers[kind]
    m = parse("The {quick} brown fox.")
    a = align(m, tok)
    hidden = a.hidden
    assert hidden == covered(a, m.hidden)
    assert len(hidden) >= (1 if kind == "bpe" else 2)  # " quick" is one BPE piece, two or more in the others
    # Each hidden subword's answer is itself; together they are the word (and its leading space).
    assert "".join(a.units[i].answer for i in hidden).strip() == "quick"
    assert all(a.units[i].answer_id == a.units[i].token_id >= N_SPECIAL for i in hidden)
    assert all(a.units[i].shown_id == MASK_ID for i in hidden)
    assert not any("cuts" in n for n in a.notes())  # the braces fall on piece boundaries


@pytest.mark.parametrize("kind", SIZES)
def test_a_brace_that_cuts_a_subword_hides_it_whole_and_says_so(tokenizers, kind):
    tok = tokenizers[kind]
    text = "The quick brown fox."
    pieces = [(tok.token(i), o) for i, o in zip(*tok.encode_offsets(text))]
    piece, (start, end) = next((p, o) for p, o in pieces if o[1] - o[0] >= 3)  # a piece of three or more characters
    inner = start + 1  # hide its second character only
    m = parse(text[:inner] + "{" + text[inner] + "}" + text[inner + 1 :])
    a = align(m, tok)
    assert len(a.hidden) == 1
    unit = a.units[a.hidden[0]]
    assert unit.span == (start, end) and unit.answer == piece
    cut = [n for n in a.notes() if "cuts a subword" in n]
    assert len(cut) == 1
    visible = (text[start:inner] + text[inner + 1 : end]).strip()
    assert repr(piece) in cut[0] and repr(visible) in cut[0]


def test_wordpiece_drops_hidden_whitespace_with_a_note(tokenizers):
    tok = tokenizers["wordpiece"]
    a = align(parse("the{ }cat"), tok)
    assert a.hidden == [] and a.uncovered == (3,)
    assert "not predicted (characters 3)" in a.notes()[-1]
    a = align(parse("the{ cat}"), tok)
    assert [a.units[i].answer for i in a.hidden] == [" cat"]


def test_byte_level_pieces_of_one_character_are_hidden_together(tokenizers):
    tok = tokenizers["bytelevel"]
    m = parse("a {é} b")  # never in the corpus: two byte pieces, both covering the one character
    a = align(m, tok)
    assert len(a.hidden) == 2 and all(a.units[i].span == (2, 3) for i in a.hidden)


def test_unknown_text_is_named_once(tokenizers):
    a = align(parse("the {é} cat é"), tokenizers["wordpiece"])
    notes = " | ".join(a.notes())
    assert "read as [UNK]: 'é'" in notes and "cannot produce" in notes and "'é' at character 4" in notes


def test_random_slots_show_their_token_id(tokenizers):
    from mlmlab.notation import Slot

    tok = tokenizers["wordpiece"]
    m = parse("the cat sat", require_mask=False)
    other = tok.encode(" dog")[0]
    m = m.with_slots({i: Slot(m.slots[i].answer, RANDOM, tok.token(other), other) for i in (4, 5, 6)})
    a = align(m, tok)
    (unit,) = [a.units[i] for i in a.hidden]
    assert unit.kind == RANDOM and unit.shown_id == other and unit.answer == " cat"
    m = m.with_slots({i: Slot(m.slots[i].answer, KEEP) for i in (4, 5, 6)})
    (unit,) = [align(m, tok).units[i] for i in align(m, tok).hidden]
    assert unit.kind == KEEP and unit.shown_id == unit.token_id


def test_glyphs_show_a_leading_space_and_keep_specials_whole():
    assert glyph(" the") == "␣the" and glyph("ing") == "ing" and glyph(" ") == "␣" and glyph("\n") == "⏎"
    assert glyph("[MASK]") == "▒" and glyph("[UNK]") == "�" and glyph("a") == "a"


def test_alignment_imports_no_torch():
    code = "import sys, mlmlab.predict.alignment, mlmlab.predict.results; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# --- a tiny WordPiece run -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file):
    db = tmp_path_factory.mktemp("subword") / "mlmlab.db"
    return db, train_pair(db, corpus_file)


@pytest.fixture(scope="module")
def wp(runs):
    from mlmlab.predict.loading import PredictorCache, load_predictor

    db, ids = runs
    return load_predictor(db, ids["wp"], None, PredictorCache())[1]


@pytest.mark.slow
def test_predict_mask_is_one_subword(runs):
    db, ids = runs
    result = run_cli("predict", "wp", "The dog sat on [MASK] mat.", "--json", "--top-k", "4", "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tokenizer"] == "wordpiece"
    (p,) = out["positions"]
    assert p["answer"] is None and p["shown"] == "[MASK]" and p["span"] == [15, 16]
    assert len(p["top_k"]) == 4 and p["prediction"] == p["top_k"][0]["token"]
    assert all(c["token"] not in ("[PAD]", "[MASK]", "[UNK]") for c in p["top_k"])
    assert out["window_chars"] == [0, 21] and [t["span"] for t in out["tokens"]][-1] == [20, 21]
    assert out["filled"].startswith("The dog sat on ") and out["filled"].endswith(" mat.")


@pytest.mark.slow
def test_predict_braces_hide_every_piece_and_note_a_cut(runs, capsys):
    db, ids = runs
    assert main(["predict", "wp", "The {quick} brown fox.", "--json", "--db", str(db)]) == 0
    out = json.loads(capsys.readouterr().out)
    spans = [tuple(p["span"]) for p in out["positions"]]
    assert spans[0][0] == 4 and spans[-1][1] == 9 and len(spans) >= 2  # " q" + "uick"
    assert "".join(p["answer"] for p in out["positions"]) == " quick"
    assert out["known"] == len(spans) and out["loss"] > 0
    assert not any("cuts" in n for n in out["notes"])
    # A brace inside "uick" hides that whole piece, and says so.
    assert main(["predict", "wp", "The q{ui}ck brown fox.", "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "note: a brace cuts a subword, so each is hidden whole: 'uick' also hides 'ck' (characters 7-8)" in text
    assert "reads   " in text and "(wordpiece subwords)" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("pos "))
    assert "chars" in header
    row = lines[lines.index(header) + 1].split()
    assert row[1] == "5-8" and row[2] == "uick"


@pytest.mark.slow
def test_predict_iterative_fills_one_subword_per_pass(runs, wp):
    db, ids = runs
    result = run_cli("predict", "wp", "The {quick brown} fox.", "--iterative", "--json", "--db", str(db))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    passes = sorted(p["fill_pass"] for p in out["positions"])
    assert passes == list(range(1, len(out["positions"]) + 1))
    direct = wp.predict(parse("The {quick brown} fox."), mode="iterative")
    assert len(direct.passes) == len(direct.positions) and all(p.index in {q.index for q in direct.positions} for p in direct.passes)
    first = min(direct.positions, key=lambda p: p.fill_pass)
    assert direct.passes[0].index == first.index and direct.passes[0].token == first.choice


@pytest.mark.slow
def test_compare_a_char_run_with_a_subword_run_by_characters(runs, capsys):
    db, ids = runs
    argv = ["predict", "ch", "the {cat} sat on [MASK] mat", "--compare", "wp", "--db", str(db)]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "tokenizer" not in out and out["compare"]["tokenizer"] == "wordpiece"
    rows = out["rows"]
    assert [r["span"] for r in rows] == [[4, 7], [15, 16]]
    assert rows[0]["text"] == "cat" and rows[1]["text"] == "[MASK]"
    assert rows[0]["positions"] == [4, 5, 6] and len(rows[0]["compare_positions"]) == 1
    assert out["disagree"] == [i for r in rows if not r["agree"] for i in r["positions"]]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "side by side, aligned by characters:" in text
    assert "of 2 hidden stretches" in text


@pytest.mark.slow
def test_predictor_rows_and_disagreements_across_tokenizers(runs, wp):
    from mlmlab.predict.loading import PredictorCache, load_predictor

    db, ids = runs
    ch = load_predictor(db, ids["ch"], None, PredictorCache())[1]
    m = parse("the {dog} ran")
    a, b = ch.predict(m), wp.predict(m)
    (row,) = compare_rows(a, b)
    assert row.span == (4, 7) and len(row.left) == 3 and row.right_fill.strip() == b.positions[0].choice.strip()
    assert disagreements(a, b) == ([] if row.agree else [4, 5, 6])
    assert disagreements(b, b) == []


@pytest.mark.slow
def test_long_text_windows_count_subwords(wp):
    words = "the cat sat on a mat and ran to the big tree " * 6
    m = parse(words + "the {dog} ran")
    result = wp.predict(m)
    start, end = result.window
    assert end - start == wp.max_seq_len and len(result.spans) == wp.max_seq_len
    assert any("subwords, longer than this model reads at once" in n for n in result.notes)
    (p,) = result.positions
    assert start <= p.index < end and p.span == (len(words) + 4, len(words) + 7)


@pytest.mark.slow
def test_training_mask_draws_whole_subwords(wp):
    text = parse("the quick brown fox jumps over the lazy dog and the old man sat", require_mask=False)
    cfg = dict(wp.config)
    try:
        wp.config = {**cfg, "mask": {"masking_prob": 0.4, "randomize_prob": 0.25, "no_change_prob": 0.25,
                                     "strategy": "whole_word"}}
        drawn = wp.draw_training_mask(text, seed=3)
    finally:
        wp.config = cfg
    aligned = align(drawn, wp.tokenizer)
    for u in aligned.units:  # every character of a drawn piece shares its kind
        kinds = {drawn.slots[i].kind for i in u.slots}
        assert len(kinds) == 1, (u, kinds)
        if u.kind == RANDOM:
            assert {drawn.slots[i].shown_id for i in u.slots} == {u.shown_id}
    # whole_word: a word's pieces are chosen together ("quick" is " q" + "uick").
    q = [u for u in aligned.units if u.text in ("q", "uick")]
    assert len({u.kind == VISIBLE for u in q}) == 1
    result = wp.predict(drawn)
    assert [p.index for p in result.positions] == aligned.hidden
    assert all(p.shown == "[MASK]" for p in result.positions if p.kind == MASKED)


@pytest.mark.slow
def test_attention_labels_subwords(wp):
    m = parse("The {quick} brown fox.")
    att = wp.attention(m)
    assert att.tokens == tuple(wp.tokenizer.token(i) for i in (wp.align(m).units[j].shown_id for j in range(len(att.tokens))))
    assert att.spans[:2] == ((0, 1), (1, 3)) and att.kinds.count(MASKED) == 2  # " T" + "he", then " q" + "uick"
    assert att.tokens[:4] == (" T", "he", "[MASK]", "[MASK]")
    assert att.index_of_slot(5) == 3 and att.index_of_slot(3) is None  # "uick"; the space is no piece
    from mlmlab.tui.explorer.render import heatmap_text

    lines = heatmap_text(att, m, cursor=5).plain.splitlines()
    assert "columns: 0 ␣T  1 he  2 ▒  3 ▒  4 ␣brown" in lines[2]
    ruler = next(line for line in lines if line.strip().startswith("0123"))
    rows = [line for line in lines if line.startswith(("   2 ", "   3 "))]
    assert len(rows) == 2
    for row in rows:  # one shade per column, under the ruler
        assert row.index(row[12]) == 12 == ruler.index("0")


def test_nothing_to_predict_when_only_dropped_whitespace_is_hidden(tokenizers):
    """The predictor's check, reached through the alignment alone."""
    assert align(parse("a{ }b"), tokenizers["wordpiece"]).hidden == []
    with pytest.raises(NotationError):
        parse("a b").require_hidden()
