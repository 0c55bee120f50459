"""The mask explorer screen, hosted in a small test App, on a tiny model trained by the test session."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from rich.text import Text
from textual.app import App
from textual.widgets import Input, Select, Static
from textual.worker import WorkerCancelled

from mlmlab.notation import parse
from mlmlab.store import Store
from mlmlab.tui.explorer.pickers import CheckpointPickers
from mlmlab.tui.explorer.render import DISAGREE, NEUTRAL, RIGHT, WRONG, filled_text
from mlmlab.tui.explorer.screen import MaskExplorerScreen
from mlmlab.tui.explorer.widget import MaskedSentence
from mlmlab.tui.formatting import bar
from mlmlab.vocab import KEEP, MASKED, RANDOM, token_glyph


class Host(App):
    """The smallest app that shows the screen, as the real app pushes it."""

    def __init__(self, db_path: Path, run_id: int | None, text: str = "the {cat} sat"):
        super().__init__()
        self.db_path, self.run_id, self.text = db_path, run_id, text

    def on_mount(self) -> None:
        self.push_screen(MaskExplorerScreen(self.db_path, self.run_id, text=self.text))


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the screen")
        await pilot.pause(0.05)


async def settle(app: App) -> None:
    """Let running prediction workers finish before the app closes (thread workers cannot be killed)."""
    with suppress(WorkerCancelled):
        await app.workers.wait_for_complete()


def shown(screen, selector: str) -> str:
    content = screen.query_one(selector, Static).content
    return content.plain if isinstance(content, Text) else str(content)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if ch == " " else ch for ch in text])


def test_screen_module_does_not_import_torch():
    code = "import sys, mlmlab.tui.explorer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_bars_and_filled_colours():
    assert bar(0.0, 10) == " " * 10 and bar(1.0, 10) == "█" * 10 and bar(0.5, 10) == "█████     "
    assert bar(1 / 16, 2) == "▏ " and bar(1 / 8, 2) == "▎ "
    from mlmlab.predict.results import Candidate, PositionPrediction, Prediction

    masked = parse("{ab}[MASK]c")
    positions = (
        PositionPrediction(0, "a", "[MASK]", MASKED, (Candidate("a", 0.9),)),
        PositionPrediction(1, "b", "[MASK]", MASKED, (Candidate("x", 0.6),)),
        PositionPrediction(2, None, "[MASK]", MASKED, (Candidate("y", 0.3),)),
    )
    text = filled_text(Prediction(masked, "all", positions, (0, 4), ("[MASK]",) * 3 + ("c",)), disagree=(1,))
    assert text.plain == "axyc"
    styles = {span.start: str(span.style) for span in text.spans}
    assert styles == {0: RIGHT, 1: f"{WRONG} {DISAGREE}", 2: NEUTRAL}


async def test_type_toggle_and_read_predictions(trained_run):
    db, run_id = trained_run
    app = Host(db, run_id)
    async with app.run_test(size=(110, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, MaskExplorerScreen)
        await wait_for(pilot, lambda: screen.outcome is not None)
        assert screen.outcome.masked.hidden == [4, 5, 6]
        assert "pos 4  answer c" in shown(screen, "#primary")

        # Type a sentence with nothing hidden: a clear message, and no predictions.
        box = screen.query_one(Input)
        box.value = ""
        await pilot.pause()
        await type_text(pilot, "the dog ran")
        await wait_for(pilot, lambda: "nothing is masked" in shown(screen, "#status"))
        assert screen.outcome is None and shown(screen, "#primary") == ""

        # Enter moves to the sentence; → → → → and Space hide the 'd'.
        await pilot.press("enter")
        sentence = screen.query_one(MaskedSentence)
        assert sentence.has_focus
        await pilot.press("right", "right", "right", "right", "space")
        assert box.value == "the {d}og ran"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked.hidden == [4])
        text = shown(screen, "#primary")
        assert "pos 4  answer d" in text and "pos 5" not in text
        candidates = [line for line in text.splitlines() if line.startswith("  ") and "%" in line]
        assert len(candidates) == screen.top_k == 5

        # `w` hides the whole word; `+` asks for one more candidate per position.
        await pilot.press("w", "plus")
        assert box.value == "the {dog} ran"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked.hidden == [4, 5, 6]
                       and len(screen.outcome.primary.prediction.positions[0].top) == 6)
        text = shown(screen, "#primary")
        assert all(f"pos {i}  answer {ch}" in text for i, ch in zip((4, 5, 6), "dog"))
        guesses = "".join(token_glyph(p.choice) for p in screen.outcome.primary.prediction.positions)
        assert f"filled  the {guesses} ran\n" in text  # whitespace guesses are drawn visibly

        # A click on the first character hides it too.
        await pilot.click(MaskedSentence, offset=(2, 1))  # inside the border and padding: position 0
        assert box.value == "{t}he {dog} ran"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked.hidden == [0, 4, 5, 6])
        await settle(app)


async def test_bad_input_is_one_message_and_the_screen_keeps_working(trained_run):
    db, run_id = trained_run
    app = Host(db, run_id)
    async with app.run_test(size=(110, 40)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome is not None)
        box = screen.query_one(Input)
        box.value = "the {cat sat"
        await wait_for(pilot, lambda: "never closed" in shown(screen, "#status"))
        assert screen.query_one("#status").has_class("error")
        box.value = "the cat} sat"
        await wait_for(pilot, lambda: "closing brace at column 8" in shown(screen, "#status"))
        box.value = "the {cat} [MASK]at"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.masked.hidden == [4, 5, 6, 8])
        assert not screen.query_one("#status").has_class("error")
        assert "answer unknown" in shown(screen, "#primary")
        # Space on a [MASK] with no known text: a message, nothing changes.
        screen.query_one(MaskedSentence).focus()
        screen.query_one(MaskedSentence).cursor = 8
        await pilot.press("space")
        await wait_for(pilot, lambda: "no known text" in shown(screen, "#status"))
        assert box.value == "the {cat} [MASK]at"
        # A checkpoint step that does not exist (chosen while the list was stale).
        screen.query_one("#checkpoint", Select).set_options([(Text("step 999"), 999)])
        await wait_for(pilot, lambda: "no checkpoint at step 999" in shown(screen, "#status"))
        await settle(app)


async def test_run_without_checkpoint_and_missing_database(tmp_path):
    db = tmp_path / "fresh.db"
    with Store(db) as store:
        store.create_run(name="warming-up", config={"train": {"checkpoint_every": 100}}, vocab={}, total_steps=5)
    app = Host(db, 1)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: "has no checkpoint yet" in shown(app.screen, "#status"))
        await settle(app)
    app = Host(tmp_path / "nothing-here.db", None)
    async with app.run_test(size=(110, 40)) as pilot:
        await wait_for(pilot, lambda: "no such file" in shown(app.screen, "#status"))
        await pilot.press("enter", "space")  # still responsive: the sentence toggles without a run
        assert app.screen.query_one(Input).value == "{t}he {cat} sat"


async def test_comparison_of_two_checkpoints_side_by_side(trained_run):
    db, run_id = trained_run
    with Store(db, readonly=True) as store:
        steps = [r["step"] for r in store.checkpoints(run_id)]
    app = Host(db, run_id, text="the {old} man and the {sea}")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome is not None)
        assert not screen.query_one("#secondary-pane").display
        screen.query_one("#compare", Select).value = f"step:{steps[0]}"
        await wait_for(pilot, lambda: screen.outcome is not None and screen.outcome.secondary is not None)
        outcome = screen.outcome
        assert screen.query_one("#secondary-pane").display
        assert f"@ step {steps[-1]}" in shown(screen, "#primary")
        assert f"@ step {steps[0]}" in shown(screen, "#secondary")
        a, b = outcome.primary.prediction, outcome.secondary.prediction
        assert list(outcome.disagree) == [p.index for p, q in zip(a.positions, b.positions) if p.choice != q.choice]
        if outcome.disagree:
            assert f"disagrees at {len(outcome.disagree)} of {len(a.positions)}" in shown(screen, "#primary")
        # Disagreeing positions carry the highlight in both filled sentences; agreeing ones do not.
        for pane in ("#primary", "#secondary"):
            content = screen.query_one(pane, Static).content
            line_start = content.plain.index("filled  ") + len("filled  ")
            marked = {s.start - line_start for s in content.spans if DISAGREE in str(s.style) and s.start >= line_start
                      and s.start < line_start + len(a.masked)}
            assert marked == set(outcome.disagree)
        # The panes list the same positions line for line: scrolling one scrolls the other.
        primary, secondary = screen.query_one("#primary-pane"), screen.query_one("#secondary-pane")
        assert primary.max_scroll_y > 2
        primary.scroll_to(y=2, animate=False, immediate=True)
        await wait_for(pilot, lambda: secondary.scroll_y == 2)
        secondary.scroll_to(y=0, animate=False, immediate=True)
        await wait_for(pilot, lambda: primary.scroll_y == 0)
        await settle(app)


async def test_random_mask_iterative_fill_and_attention_view(trained_run):
    db, run_id = trained_run
    app = Host(db, run_id, text="the big red fox ran to the sea")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "nothing is masked" in shown(screen, "#status"))
        screen.query_one(MaskedSentence).focus()
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.outcome is not None)
        drawn = screen.outcome.masked
        kinds = [drawn.slots[i].kind for i in drawn.hidden]
        assert len(kinds) == round(len(drawn) * 0.15)  # the run's masking_prob, every character known
        assert set(kinds) <= {MASKED, RANDOM, KEEP}
        assert screen.masked == drawn and screen.query_one(Input).value == drawn.notation()

        await pilot.press("i")
        await wait_for(pilot, lambda: screen.outcome.primary.prediction.mode == "iterative")
        assert "filled in pass 1" in shown(screen, "#primary")

        await pilot.press("a")
        await wait_for(pilot, lambda: screen.outcome.attention is not None)
        assert screen.query_one("#attention-pane").display and not screen.query_one("#panes").display
        heat = shown(screen, "#attention")
        assert "avg of all layers" in heat and "avg of all heads" in heat
        rows = [line for line in heat.splitlines()[3:] if line.strip()]
        assert len(rows) == len(set(drawn.hidden) | {screen.query_one(MaskedSentence).cursor})
        await pilot.press("l", "h")
        await wait_for(pilot, lambda: screen.outcome.attention.layer == 0 and screen.outcome.attention.head == 0)
        assert "layer 1/2" in shown(screen, "#attention") and "head 1/2" in shown(screen, "#attention")
        await settle(app)


async def test_runs_started_while_open_appear_in_the_pickers(tmp_path):
    db = tmp_path / "runs.db"
    with Store(db) as store:
        store.create_run(name="first", config={"train": {"checkpoint_every": 100}}, vocab={}, total_steps=5)
    app = Host(db, None)
    async with app.run_test(size=(110, 40)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: "has no checkpoint yet" in shown(screen, "#status"))
        with Store(db) as store:
            store.create_run(name="second", config={"train": {"checkpoint_every": 100}}, vocab={}, total_steps=5)
        screen.query_one(CheckpointPickers).refresh_choices()  # what the pickers' 5-second timer calls
        await settle(app)
        await wait_for(pilot, lambda: "run:2" in [value for _, value in screen.query_one("#compare", Select)._options])
        assert screen.query_one("#run", Select).value == 1  # the choice stays
        compare = [value for _, value in screen.query_one("#compare", Select)._options]
        assert "run:2" in compare
        await settle(app)
