"""The mask explorer screen: pick a run and checkpoint (or open a local Hugging Face model folder),
type a sentence, hide parts of it, read the answers.

The app pushes `MaskExplorerScreen(db_path, run_id)`. The slow parts run in thread workers that
post their results as messages: the pickers read runs and checkpoints (`pickers`), and the screen's
prediction worker loads checkpoints and predicts (`worker.answer`). Importing this module does not
import torch: the predictors are created, and cached while the screen is open, in that worker.

Keys: type in the box (the notation of `mlmlab predict`), Enter to reach the sentence, then ←/→ to
move, Space to hide or show a character, `w` the word (with a subword model: every piece of it), `r` a random 15% as training masks, `c` to
show all; `i` one-at-a-time filling, `a` the attention view (`l` layer, `h` head), `+`/`-` top-k.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState, get_current_worker

from mlmlab.errors import MlmlabError
from mlmlab.notation import MaskedText, parse
from mlmlab.tui.explorer.pickers import CheckpointPickers
from mlmlab.tui.explorer.render import comparison_text, heatmap_text, legend_text, model_input_text, side_text
from mlmlab.tui.explorer.widget import MaskedSentence
from mlmlab.tui.explorer.worker import Outcome, Request, answer, new_predictor_cache
from mlmlab.tui.messages import (ChoicesProblem, PredictionFailed, PredictionLoading, PredictionReady,
                                 RandomMaskRequested, SentenceCursorMoved, SentenceEdited, SentenceProblem, TargetChosen)
from mlmlab.vocab import FILL_ALL, FILL_ITERATIVE

TOP_K_RANGE = (1, 20)


class MaskExplorerScreen(Screen):
    """Pick a run and checkpoint, type a sentence, hide parts of it, read the predictions."""

    CSS_PATH = "explorer.tcss"
    AUTO_FOCUS = "#sentence-input"
    BINDINGS = [
        Binding("escape", "close", "back"),
        Binding("i", "toggle_mode", "one at a time"),
        Binding("a", "toggle_attention", "attention"),
        Binding("l", "next_layer", "layer", show=False),
        Binding("h", "next_head", "head", show=False),
        Binding("plus,equals_sign", "top_k(1)", "top-k +"),
        Binding("minus", "top_k(-1)", "top-k −"),
    ]

    def __init__(self, db_path: Path, run_id: int | None = None, text: str = "The {quick} brown fox jumps over the lazy dog."):
        super().__init__()
        self.db_path = Path(db_path)
        self.initial_run = run_id
        self.initial_text = text
        self.masked: MaskedText | None = None
        self.top_k = 5
        self.mode = FILL_ALL
        self.attention_on = False
        self.attn_layer: int | None = None
        self.attn_head: int | None = None
        self.outcome: Outcome | None = None
        self.serial = 0
        self._predictors = None  # a PredictorCache, made by the first prediction worker (it brings torch)
        self._cache_lock = threading.Lock()
        self._echo: str | None = None  # the input value we set ourselves (its Changed event is ours)
        self._asked: tuple | None = None  # the question of the latest request, to skip asking it twice

    # Layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield CheckpointPickers(self.db_path, self.initial_run, id="pickers")
        yield Input(self.initial_text, id="sentence-input", placeholder="The {quick} brown fox  ·  [MASK] hides one unknown character (a subword model: one subword)")
        yield Static(id="status", markup=False)
        yield MaskedSentence(id="sentence")
        yield Static(id="model-input", markup=False)
        yield Static(id="legend", markup=False)
        yield Static(id="comparison", markup=False)
        with Horizontal(id="panes"):
            with VerticalScroll(id="primary-pane"):
                yield Static(id="primary", markup=False)
            with VerticalScroll(id="secondary-pane"):
                yield Static(id="secondary", markup=False)
        with VerticalScroll(id="attention-pane"):
            yield Static(id="attention", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.query_one(Input).cursor_blink = False
        self.query_one("#legend", Static).update(legend_text())
        self.query_one("#secondary-pane").display = False
        self.query_one("#attention-pane").display = False
        self.query_one("#comparison").display = False
        # Side by side, both panes list the same positions line for line (unless one run reads subwords and
        # the other characters: then #comparison lines them up): scrolling one scrolls both.
        primary, secondary = self.query_one("#primary-pane"), self.query_one("#secondary-pane")
        self.watch(primary, "scroll_y", lambda y: self._follow_scroll(secondary, y), init=False)
        self.watch(secondary, "scroll_y", lambda y: self._follow_scroll(primary, y), init=False)
        self._parse(self.initial_text)

    @staticmethod
    def _follow_scroll(pane, y: float) -> None:
        if pane.display and abs(pane.scroll_y - y) >= 1:
            pane.scroll_to(y=y, animate=False, immediate=True)

    def on_unmount(self) -> None:
        if self._predictors is not None:
            self._predictors.clear()  # the cache lives while the screen is open

    # Status line ---------------------------------------------------------------------------

    def say(self, text: str, error: bool = False) -> None:
        status = self.query_one("#status", Static)
        status.update(Text(text))
        status.set_class(error, "error")

    @on(ChoicesProblem)
    def _choices_problem(self, event: ChoicesProblem) -> None:
        self.say(event.text, error=True)

    @on(TargetChosen)
    def _target_chosen(self, event: TargetChosen) -> None:
        self.query_one("#secondary-pane").display = self.query_one(CheckpointPickers).comparing and not self.attention_on
        self.predict(force=event.force)

    # The sentence --------------------------------------------------------------------------

    @on(Input.Changed, "#sentence-input")
    def _typed(self, event: Input.Changed) -> None:
        if event.value == self._echo:
            return  # our own update after a toggle: the sentence already has it
        self._echo = None
        self._parse(event.value)

    def _parse(self, value: str) -> None:
        try:
            masked = parse(value, require_mask=False)
        except MlmlabError as exc:
            self.say(str(exc), error=True)
            return
        self._set_masked(masked, echo=False)

    @on(Input.Submitted, "#sentence-input")
    def _submitted(self) -> None:
        self.query_one(MaskedSentence).focus()

    def _set_masked(self, masked: MaskedText, echo: bool) -> None:
        self._show_masked(masked, echo)
        self.query_one("#model-input", Static).update(model_input_text(masked, None))
        self.predict()

    def _show_masked(self, masked: MaskedText, echo: bool) -> None:
        """Show `masked` in the sentence widget; with `echo`, also write its notation into the box."""
        self.masked = masked
        self.query_one(MaskedSentence).show(masked)
        if echo:
            self._echo = masked.notation()  # `_typed` recognises this update as ours
            self.query_one(Input).value = self._echo

    @on(SentenceEdited)
    def _edited(self, event: SentenceEdited) -> None:
        self._set_masked(event.masked, echo=True)

    @on(SentenceProblem)
    def _problem(self, event: SentenceProblem) -> None:
        self.say(event.text, error=True)

    @on(RandomMaskRequested)
    def _random(self, event: RandomMaskRequested) -> None:
        self.predict(draw=(random.randrange(2**31), event.around))

    # Predictions ---------------------------------------------------------------------------

    def predict(self, draw: tuple[int, int] | None = None, force: bool = False) -> None:
        """Ask the worker about the current sentence; stale answers are dropped when they arrive."""
        targets = self.query_one(CheckpointPickers).targets()
        if targets is None or self.masked is None:
            return
        if not self.masked.hidden and draw is None:
            self._asked = None
            self.say("nothing is masked: wrap text in {braces}, write [MASK], or hide characters below "
                     "(Enter, then Space / w / r)", error=True)
            self._clear_results()
            return
        attention = (self.attn_layer, self.attn_head) if self.attention_on else None
        question = (*targets, self.masked, self.top_k, self.mode, attention)
        if question == self._asked and draw is None and not force:
            return  # a Select echoing a value it already had: the answer is on screen or on its way
        self._asked = question
        self.serial += 1
        self._predict(Request(self.serial, self.db_path, *question, draw))

    def _cache(self):  # -> PredictorCache
        with self._cache_lock:
            if self._predictors is None:
                self._predictors = new_predictor_cache()
            return self._predictors

    @work(thread=True, exclusive=True, group="predict", exit_on_error=False, description="predict masked positions")
    def _predict(self, request: Request) -> None:
        worker = get_current_worker()

        def loading(text: str) -> None:
            if not worker.is_cancelled:
                self.post_message(PredictionLoading(request.serial, text))

        try:
            outcome = answer(request, self._cache(), loading)
        except MlmlabError as exc:
            if not worker.is_cancelled:
                self.post_message(PredictionFailed(request.serial, str(exc)))
            return
        if not worker.is_cancelled:
            self.post_message(PredictionReady(outcome))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group in ("predict", "choices") and event.state == WorkerState.ERROR:
            error = event.worker.error
            self.say(f"{event.worker.description} failed (a bug; please report it): {type(error).__name__}: {error}",
                     error=True)

    @on(PredictionLoading)
    def _loading(self, event: PredictionLoading) -> None:
        if event.serial == self.serial:
            self.say(event.text)

    @on(PredictionFailed)
    def _failed(self, event: PredictionFailed) -> None:
        if event.serial == self.serial:
            self._asked = None  # asking again may succeed (a checkpoint may have been written since)
            self.say(event.text, error=True)
            self._clear_results()

    @on(PredictionReady)
    def _ready(self, event: PredictionReady) -> None:
        outcome: Outcome = event.outcome
        if outcome.serial != self.serial:
            return
        self.outcome = outcome
        if outcome.masked != self.masked:  # a random draw: show it and write it into the box
            self._show_masked(outcome.masked, echo=True)
        prediction = outcome.primary.prediction
        notes = list(prediction.notes)
        mode = "one at a time, most confident first" if prediction.mode == FILL_ITERATIVE else "all at once"
        self.say(" · ".join([f"{len(prediction.positions)} hidden · top-{self.top_k} · fill {mode}", *notes]))
        self.query_one("#model-input", Static).update(model_input_text(outcome.masked, prediction))
        comparing = outcome.secondary is not None
        width = 16 if comparing else 30
        self.query_one("#primary", Static).update(side_text(outcome.primary, outcome.disagree, width))
        if outcome.secondary:
            self.query_one("#secondary", Static).update(side_text(outcome.secondary, outcome.secondary_disagree, width))
        rows = self.query_one("#comparison", Static)
        rows.display = bool(outcome.rows)  # a char run beside a subword run: their positions differ
        if outcome.rows:
            rows.update(comparison_text(list(outcome.rows), outcome.primary.ref.short_label, outcome.secondary.ref.short_label))
        self.query_one("#secondary-pane").display = comparing and not self.attention_on
        self._draw_attention()

    def _clear_results(self) -> None:
        self.outcome = None
        for name in ("#primary", "#secondary", "#attention", "#comparison"):
            self.query_one(name, Static).update(Text(""))
        self.query_one("#comparison").display = False

    def _draw_attention(self) -> None:
        if not self.attention_on:
            return
        pane = self.query_one("#attention", Static)
        outcome = self.outcome
        if outcome is None or outcome.attention is None:
            pane.update(Text("attention: waiting for a prediction …", style="dim"))
            return
        pane.update(heatmap_text(outcome.attention, outcome.masked, self.query_one(MaskedSentence).cursor))

    @on(SentenceCursorMoved)
    def _cursor_moved(self) -> None:
        self._draw_attention()

    # Actions -------------------------------------------------------------------------------

    def action_close(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.dismiss()

    def action_toggle_mode(self) -> None:
        self.mode = FILL_ITERATIVE if self.mode == FILL_ALL else FILL_ALL
        self.predict()

    def action_toggle_attention(self) -> None:
        self.attention_on = not self.attention_on
        self.query_one("#attention-pane").display = self.attention_on
        self.query_one("#panes").display = not self.attention_on
        if not self.attention_on:
            self.query_one("#secondary-pane").display = self.query_one(CheckpointPickers).comparing
        self._draw_attention()
        self.predict()

    def _cycle(self, current: int | None, count: int | None) -> int | None:
        if not count:
            return None
        if current is None:
            return 0
        return None if current + 1 >= count else current + 1

    def action_next_layer(self) -> None:
        if self.attention_on and self.outcome and self.outcome.attention:
            self.attn_layer = self._cycle(self.attn_layer, self.outcome.attention.n_layers)
            self.predict()

    def action_next_head(self) -> None:
        if self.attention_on and self.outcome and self.outcome.attention:
            self.attn_head = self._cycle(self.attn_head, self.outcome.attention.n_heads)
            self.predict()

    def action_top_k(self, delta: int) -> None:
        low, high = TOP_K_RANGE
        self.top_k = max(low, min(high, self.top_k + delta))
        self.predict()
