"""The mask explorer on a tiny WordPiece run: subword predictions on screen, `w` over a word of
several pieces, the attention labels and the side-by-side comparison with a char run."""

from __future__ import annotations

import pytest
from textual.widgets import Input, Select

from subword_helpers import train_pair
from test_explorer import Host, settle, shown, wait_for
from mlmlab.tui.explorer.widget import MaskedSentence

pytestmark = pytest.mark.slow

KEYS = {" ": "space", "{": "left_curly_bracket", "}": "right_curly_bracket", ".": "full_stop"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus_file):
    db = tmp_path_factory.mktemp("explorer-subword") / "mlmlab.db"
    return db, train_pair(db, corpus_file)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*[KEYS.get(ch, ch) for ch in text])


def hidden_spans(screen) -> list[tuple[int, int]]:
    return [tuple(p.span) for p in screen.outcome.primary.prediction.positions]


async def test_typed_hidden_word_shows_subword_predictions(runs):
    db, ids = runs
    app = Host(db, ids["wp"], text="The dog sat on [MASK] mat.")
    async with app.run_test(size=(120, 44)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome is not None)
        text = shown(screen, "#primary")
        heads = [line for line in text.splitlines() if line.startswith("pos ")]
        assert len(heads) == 1 and heads[0].endswith("(chars 15-15)  answer unknown  saw [MASK]")  # one subword
        assert "model reads (wordpiece" in shown(screen, "#model-input")

        box = screen.query_one(Input)
        box.value = ""
        await pilot.pause()
        await type_text(pilot, "The {quick} brown fox.")
        assert box.value == "The {quick} brown fox."
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked == screen.masked
                       and screen.outcome.masked.hidden == [4, 5, 6, 7, 8])
        text = shown(screen, "#primary")
        # " quick" is two pieces here: each is a position with its characters, answer drawn readably.
        assert "pos 2 (chars 4-4)  answer ␣q  saw [MASK]" in text
        assert "pos 3 (chars 5-8)  answer uick  saw [MASK]" in text
        candidates = [line for line in text.splitlines() if line.startswith("  ") and "%" in line]
        assert len(candidates) == 2 * screen.top_k
        tops = [p.top[0].token for p in screen.outcome.primary.prediction.positions]
        assert any(line.strip().startswith(tops[0].replace(" ", "␣")) for line in candidates)
        reads = shown(screen, "#model-input")
        assert "␣T he [MASK] [MASK] ␣brown" in reads  # [MASK] written out, never eaten as markup
        assert "hidden · top-5" in shown(screen, "#status")
        await settle(app)


async def test_w_hides_every_piece_of_the_word_and_braces_that_cut_say_so(runs):
    db, ids = runs
    app = Host(db, ids["wp"], text="The q{ui}ck brown fox.")
    async with app.run_test(size=(120, 44)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome is not None)
        assert "a brace cuts a subword, so each is hidden whole: 'uick' also hides 'ck'" in shown(screen, "#status")
        assert hidden_spans(screen) == [(5, 9)]

        box = screen.query_one(Input)
        await pilot.press("enter")  # from the box to the sentence; `c` shows every character again
        sentence = screen.query_one(MaskedSentence)
        assert sentence.has_focus
        await pilot.press("c")
        assert box.value == "The quick brown fox."
        await pilot.press("right", "right", "right", "right", "right", "w")  # on the 'u' of "quick"
        assert box.value == "The {quick} brown fox."
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked.hidden == [4, 5, 6, 7, 8])
        assert hidden_spans(screen) == [(4, 5), (5, 9)]  # " q" and "uick": the word's every piece
        assert "cuts" not in shown(screen, "#status")

        # The attention view labels its rows and columns with the pieces.
        await pilot.press("a")
        await wait_for(pilot, lambda: "columns:" in shown(screen, "#attention"))
        heat = shown(screen, "#attention")
        assert "2 ▒" in heat and "␣brown" in heat
        await settle(app)


async def test_comparison_with_a_char_run_lines_up_by_characters(runs):
    db, ids = runs
    app = Host(db, ids["wp"], text="the {cat} sat on [MASK] mat")
    async with app.run_test(size=(140, 48)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome is not None)
        compare = screen.query_one("#compare", Select)
        await wait_for(pilot, lambda: any(v == f"run:{ids['ch']}" for _, v in compare._options))
        compare.value = f"run:{ids['ch']}"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.secondary is not None)
        rows = shown(screen, "#comparison")
        assert "side by side by characters" in rows and "of 2 hidden stretches" in rows
        assert "chars 4-6 cat" in rows and "chars 15-15 ▒" in rows
        assert screen.query_one("#comparison").display
        primary, secondary = shown(screen, "#primary"), shown(screen, "#secondary")
        assert "pos 2 (chars 4-6)  answer ␣cat" in primary
        assert all(f"pos {i}  answer {ch}" in secondary for i, ch in zip((4, 5, 6), "cat"))
        outcome = screen.outcome
        rows_obj = outcome.rows
        assert [r.span for r in rows_obj] == [(4, 7), (15, 16)]
        assert set(outcome.secondary_disagree) <= {4, 5, 6, 15}
        await settle(app)
