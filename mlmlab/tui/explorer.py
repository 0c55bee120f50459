"""The mask explorer screen: type a sentence, hide parts of it, read what a checkpoint believes.

The app pushes `MaskExplorerScreen(db_path, run_id)`. Importing this module does not import torch:
checkpoints load in a thread worker (`mlmlab.prediction`, imported there), are cached while the
screen is open, and results come back as messages posted to the screen. Every token is drawn with
Rich `Text`, never markup, because markup would swallow `[MASK]`.

Keys: type in the box (the notation of `mlmlab predict`), Enter to reach the sentence, then ←/→ to
move, Space to hide or show a character, `w` the word, `r` a random 15% as training masks, `c` to
show all; `i` one-at-a-time filling, `a` the attention view (`l` layer, `h` head), `+`/`-` top-k.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Select, Static
from textual.worker import Worker, WorkerState, get_current_worker

from mlmlab.errors import MlmlabError
from mlmlab.notation import KEEP, MASK_TEXT, MASKED, RANDOM, MaskedText, parse, visible
from mlmlab.store import Store, effective_status
from mlmlab.tokenizer import UNK as UNK_TEXT
from mlmlab.tui.formatting import bar

if TYPE_CHECKING:
    from mlmlab.prediction import AttentionMap, CheckpointRef, Prediction, PredictorCache

FILL_ALL, FILL_ITERATIVE = "all", "iterative"  # the same names as mlmlab.prediction's, without importing it
LATEST = -1  # the checkpoint Select's value for "the latest checkpoint"
NO_COMPARISON = "none"
TOP_K_RANGE = (1, 20)

# Styles, shared by the sentence, the filled sentences and the legend.
KIND_STYLES = {MASKED: "bold white on dark_blue", RANDOM: "bold black on magenta", KEEP: "bold black on cyan"}
KIND_LABELS = {MASKED: "[MASK]", RANDOM: "random token", KEEP: "unchanged"}
RIGHT, WRONG, NEUTRAL = "bold green", "bold red", "bold yellow"
DISAGREE = "underline on dark_magenta"


# --- requests and outcomes (plain data; the worker computes, the screen draws) -----------------


@dataclass(frozen=True)
class Target:
    run_id: int
    step: int | None  # None: the run's latest checkpoint


@dataclass(frozen=True)
class Request:
    serial: int
    db_path: Path
    primary: Target
    secondary: Target | None
    masked: MaskedText
    top_k: int = 5
    mode: str = FILL_ALL
    attention: tuple[int | None, int | None] | None = None  # (layer, head) while the heatmap shows
    draw: tuple[int, int] | None = None  # (seed, around): first hide positions as training does


@dataclass(frozen=True)
class Side:
    ref: CheckpointRef
    prediction: Prediction
    load_seconds: float | None  # None: it was cached
    predict_ms: float


@dataclass(frozen=True)
class Outcome:
    serial: int
    masked: MaskedText  # differs from the request's after a random draw
    primary: Side
    secondary: Side | None
    disagree: tuple[int, ...]
    attention: AttentionMap | None


def answer(request: Request, cache: PredictorCache, loading: Callable[[str], None] = lambda _: None) -> Outcome:
    """Everything one request needs, computed off the UI thread (this is where torch comes in)."""
    from mlmlab.prediction import disagreements, resolve_checkpoint

    targets = [request.primary] + ([request.secondary] if request.secondary else [])
    with Store(request.db_path, readonly=True) as store:
        refs = [resolve_checkpoint(store, t.run_id, t.step) for t in targets]
    predictors, loaded = [], []
    for ref in refs:
        fresh = ref.path not in cache
        if fresh:
            loading(f"loading {ref.label} …")
        predictor = cache.get(ref.path)
        predictors.append(predictor)
        loaded.append(predictor.load_seconds if fresh else None)
    masked = request.masked
    if request.draw:
        seed, around = request.draw
        masked = predictors[0].draw_training_mask(masked, seed, around)
    sides = []
    for ref, predictor, load_seconds in zip(refs, predictors, loaded):
        start = time.perf_counter()
        prediction = predictor.predict(masked, request.top_k, request.mode)
        sides.append(Side(ref, prediction, load_seconds, (time.perf_counter() - start) * 1000))
    disagree = tuple(disagreements(sides[0].prediction, sides[1].prediction)) if len(sides) == 2 else ()
    attention = predictors[0].attention(masked, *request.attention) if request.attention else None
    return Outcome(request.serial, masked, sides[0], sides[1] if len(sides) == 2 else None, disagree, attention)


# --- drawing (pure functions from results to Rich Text) -----------------------------------------


def cell_of(token: str) -> str:
    """One character cell for a token the model saw."""
    return {MASK_TEXT: "▒", UNK_TEXT: "�"}.get(token, visible(token))


def filled_text(prediction: Prediction, disagree: tuple[int, ...] = ()) -> Text:
    """The sentence with hidden positions filled: right green, wrong red, no known answer yellow."""
    chosen = {p.index: p for p in prediction.positions}
    text = Text()
    for i, slot in enumerate(prediction.masked.slots):
        p = chosen.get(i)
        if p is None:
            text.append(slot.answer if slot.answer is not None else "?")
            continue
        style = {True: RIGHT, False: WRONG, None: NEUTRAL}[p.correct]
        text.append(visible(p.choice) if p.choice.isspace() else p.choice, style=f"{style} {DISAGREE}" if i in disagree else style)
    return text


def model_input_text(masked: MaskedText, prediction: Prediction | None) -> Text:
    """What the model reads: [MASK]s, random tokens and [UNK]s written out."""
    if prediction is not None and prediction.masked == masked:
        start, end = prediction.window
        tokens = list(prediction.model_input)
    else:  # before the first prediction: no vocabulary yet, so no [UNK]s
        start, end = 0, len(masked)
        tokens = [MASK_TEXT if s.kind == MASKED else (s.shown or "") if s.kind == RANDOM else s.answer or "" for s in masked.slots]
    text = Text("model reads: ", style="dim")
    if start:
        text.append("… ", style="dim")
    for slot, token in zip(masked.slots[start:end], tokens):
        style = KIND_STYLES.get(slot.kind, "")
        if token == UNK_TEXT:
            style = "bold red"
        text.append(token, style=style)
    if end < len(masked):
        text.append(" …", style="dim")
    return text


def side_text(side: Side, disagree: tuple[int, ...], bar_width: int) -> Text:
    """One checkpoint's predictions: a heading, the filled sentence, one block per hidden position."""
    prediction, ref = side.prediction, side.ref
    text = Text(ref.label, style="bold")
    if ref.eval_loss is not None:
        text.append(f" · eval loss {ref.eval_loss:.3f}", style="dim")
    if ref.eval_acc is not None:
        text.append(f" · acc {ref.eval_acc:.1%}", style="dim")
    text.append("\nfilled  ")
    text.append_text(filled_text(prediction, disagree))
    summary = []
    if prediction.n_known:
        summary.append(f"{prediction.n_correct} of {prediction.n_known} right")
    if prediction.loss is not None:
        summary.append(f"loss {prediction.loss:.3f}")
    if disagree:
        summary.append(f"disagrees at {len(disagree)} of {len(prediction.positions)}")
    summary.append(f"{side.predict_ms:.0f} ms" + (f" (loaded in {side.load_seconds:.2f} s)" if side.load_seconds else ""))
    text.append("\n" + " · ".join(summary) + "\n", style="dim")
    for p in prediction.positions:
        text.append("\n")
        head_style = DISAGREE if p.index in disagree else "bold"
        text.append(f"pos {p.index}", style=head_style)
        text.append("  answer ")
        text.append(visible(p.answer) if p.answer is not None else "unknown", style="bold" if p.answer is not None else "dim")
        text.append("  saw ")
        text.append(p.shown, style=KIND_STYLES.get(p.kind, ""))
        if p.answer_rank is not None:
            text.append(f"  rank {p.answer_rank} · p {p.answer_probability:.3f}", style=RIGHT if p.answer_rank == 1 else "")
        if p.fill_pass is not None:
            text.append(f"  filled in pass {p.fill_pass}", style="dim")
        for c in p.top:
            text.append("\n  ")
            mark = p.answer is not None and c.token == p.answer
            text.append(f"{visible(c.token):>2}", style=RIGHT if mark else "bold")
            text.append(" " + bar(c.probability, bar_width), style="green" if mark else "blue")
            text.append(f" {c.probability:6.1%}")
        text.append("\n")
    return text


def heatmap_text(attention: AttentionMap, masked: MaskedText, cursor: int) -> Text:
    """Rows for the hidden positions and the cursor; a column per token the model read."""
    shades = " ·░▒▓█"
    offset = attention.offset
    layer = "avg of all layers" if attention.layer is None else f"layer {attention.layer + 1}/{attention.n_layers}"
    head = "avg of all heads" if attention.head is None else f"head {attention.head + 1}/{attention.n_heads}"
    text = Text(f"attention · {layer} (l) · {head} (h) · each row: where that position looked, darkest = most\n\n", style="bold")
    label_width = 10
    text.append(" " * label_width)
    for token in attention.tokens:
        text.append(cell_of(token), style="bold")
    text.append("\n")
    rows = sorted(set(masked.hidden) | ({cursor} if offset <= cursor < offset + len(attention.tokens) else set()))
    for index in rows:
        local = index - offset
        if not 0 <= local < len(attention.tokens):
            continue
        weights = attention.weights[local]
        top = max(weights) or 1.0
        label = f"{index:>4} {cell_of(attention.tokens[local])}"
        text.append(f"{label:<{label_width}}", style="reverse" if index == cursor else KIND_STYLES.get(masked.slots[index].kind, ""))
        for w in weights:
            level = min(len(shades) - 1, round(w / top * (len(shades) - 1)))
            text.append(shades[level], style="bold red" if level == len(shades) - 1 else "red")
        best = sorted(range(len(weights)), key=weights.__getitem__, reverse=True)[:3]
        text.append("  " + "  ".join(f"{cell_of(attention.tokens[j])}@{j + offset} {weights[j]:.2f}" for j in best), style="dim")
        text.append("\n")
    return text


# --- the sentence widget ------------------------------------------------------------------------


class MaskedSentence(Widget, can_focus=True):
    """The sentence, one cell per position: move the cursor, hide and show characters, click them."""

    BINDINGS = [
        Binding("left", "move(-1)", "←", show=False),
        Binding("right", "move(1)", "→", show=False),
        Binding("home", "move_to(0)", "start", show=False),
        Binding("end", "move_to(-1)", "end", show=False),
        Binding("space", "toggle", "hide/show"),
        Binding("w", "toggle_word", "word"),
        Binding("r", "random", "random 15%"),
        Binding("c", "clear", "show all"),
    ]

    DEFAULT_CSS = """
    MaskedSentence { height: auto; min-height: 1; }
    """

    cursor: reactive[int] = reactive(0)

    @dataclass
    class Edited(Message):
        """The user hid or showed positions."""

        masked: MaskedText

    @dataclass
    class RandomRequested(Message):
        """Hide positions as training does; only the worker knows the run's vocabulary and split."""

        around: int

    @dataclass
    class Problem(Message):
        text: str

    @dataclass
    class CursorMoved(Message):
        index: int

    def __init__(self, *, id: str | None = None):
        super().__init__(id=id)
        self.masked: MaskedText | None = None

    def show(self, masked: MaskedText | None) -> None:
        self.masked = masked
        self.cursor = min(self.cursor, max(len(masked) - 1, 0)) if masked else 0
        self.refresh(layout=True)

    def _lines(self, width: int) -> list[list[int]]:
        """Positions on each line, wrapped at `width` cells (one cell each, wide characters two)."""
        lines: list[list[int]] = [[]]
        used = 0
        for i, slot in enumerate(self.masked.slots if self.masked else ()):
            w = max(1, cell_len(self._glyph(slot)))
            if used + w > max(width, 1) and lines[-1]:
                lines.append([])
                used = 0
            lines[-1].append(i)
            used += w
        return lines

    @staticmethod
    def _glyph(slot) -> str:
        if slot.answer is None:
            return "?"
        if slot.hidden or not slot.answer.isprintable():
            return visible(slot.answer) if slot.answer.isspace() else slot.answer
        return slot.answer

    def get_content_height(self, container, viewport, width: int) -> int:
        return max(1, len(self._lines(width)))

    def render(self) -> Text:
        if not self.masked:
            return Text("(type a sentence above)", style="dim")
        text = Text(no_wrap=True, overflow="crop")
        for n, line in enumerate(self._lines(self.content_size.width)):
            if n:
                text.append("\n")
            for i in line:
                slot = self.masked.slots[i]
                style = KIND_STYLES.get(slot.kind, "")
                if i == self.cursor and self.has_focus:
                    style = f"{style} reverse underline".strip()
                text.append(self._glyph(slot), style=style)
        return text

    def _at(self, x: int, y: int) -> int | None:
        lines = self._lines(self.content_size.width)
        if not 0 <= y < len(lines):
            return None
        used = 0
        for i in lines[y]:
            used += max(1, cell_len(self._glyph(self.masked.slots[i])))
            if x < used:
                return i
        return None

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or not self.masked:
            return
        index = self._at(offset.x, offset.y)
        if index is not None:
            self.cursor = index
            self.action_toggle()

    def watch_cursor(self, index: int) -> None:
        self.refresh()
        self.post_message(self.CursorMoved(index))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def action_move(self, delta: int) -> None:
        if self.masked:
            self.cursor = max(0, min(len(self.masked) - 1, self.cursor + delta))

    def action_move_to(self, index: int) -> None:
        if self.masked:
            self.cursor = index % len(self.masked)

    def _edit(self, change: Callable[[MaskedText], MaskedText]) -> None:
        if not self.masked:
            self.post_message(self.Problem("type a sentence first"))
            return
        try:
            masked = change(self.masked)
        except MlmlabError as exc:
            self.post_message(self.Problem(str(exc)))
            return
        self.show(masked)
        self.post_message(self.Edited(masked))

    def action_toggle(self) -> None:
        self._edit(lambda m: m.toggle(self.cursor))

    def action_toggle_word(self) -> None:
        self._edit(lambda m: m.toggle_word(self.cursor))

    def action_clear(self) -> None:
        self._edit(lambda m: m.unmasked())

    def action_random(self) -> None:
        if not self.masked:
            self.post_message(self.Problem("type a sentence first"))
            return
        self.post_message(self.RandomRequested(self.cursor))


# --- the screen ---------------------------------------------------------------------------------


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

    @dataclass
    class Ready(Message):
        outcome: Outcome

    @dataclass
    class Failed(Message):
        serial: int
        text: str

    @dataclass
    class Loading(Message):
        serial: int
        text: str

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
        self._runs: list[dict[str, Any]] = []
        self._predictors: PredictorCache | None = None
        self._cache_lock = threading.Lock()
        self._echo: str | None = None  # the input value we set ourselves (its Changed event is ours)
        self._option_values: dict[str | None, list] = {}
        self._asked: tuple | None = None  # the question of the latest request, to skip asking it twice

    # Layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="pickers"):
            yield Select([], id="run", prompt="run", allow_blank=True, compact=True)
            yield Select([(Text("latest checkpoint"), LATEST)], id="checkpoint", allow_blank=False, compact=True)
            yield Select([(Text("no comparison"), NO_COMPARISON)], id="compare", allow_blank=False, compact=True)
        yield Input(self.initial_text, id="sentence-input", placeholder="The {quick} brown fox  ·  [MASK] hides one unknown character")
        yield Static(id="status", markup=False)
        yield MaskedSentence(id="sentence")
        yield Static(id="model-input", markup=False)
        yield Static(id="legend", markup=False)
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
        self.query_one("#legend", Static).update(self._legend())
        self.query_one("#secondary-pane").display = False
        self.query_one("#attention-pane").display = False
        # Side by side, both panes list the same positions line for line: scrolling one scrolls both.
        primary, secondary = self.query_one("#primary-pane"), self.query_one("#secondary-pane")
        self.watch(primary, "scroll_y", lambda y: self._follow_scroll(secondary, y), init=False)
        self.watch(secondary, "scroll_y", lambda y: self._follow_scroll(primary, y), init=False)
        self._load_runs(select=self.initial_run)
        self._parse(self.initial_text)
        self.set_interval(5.0, self._refresh_choices)

    @staticmethod
    def _follow_scroll(pane, y: float) -> None:
        if pane.display and abs(pane.scroll_y - y) >= 1:
            pane.scroll_to(y=y, animate=False, immediate=True)

    def on_unmount(self) -> None:
        if self._predictors is not None:
            self._predictors.clear()  # the cache lives while the screen is open

    def _legend(self) -> Text:
        text = Text("hidden: ", style="dim")
        for kind in (MASKED, RANDOM, KEEP):
            text.append(f" {KIND_LABELS[kind]} ", style=KIND_STYLES[kind])
            text.append(" ")
        text.append("  filled: ", style="dim")
        for label, style in (("right", RIGHT), ("wrong", WRONG), ("no answer", NEUTRAL), ("runs disagree", DISAGREE)):
            text.append(label, style=style)
            text.append(" ")
        return text

    # Status line ---------------------------------------------------------------------------

    def say(self, text: str, error: bool = False) -> None:
        status = self.query_one("#status", Static)
        status.update(Text(text))
        status.set_class(error, "error")

    # Runs and checkpoints (small, fast SQLite reads on the UI thread) -------------------------

    def _read_store(self, read: Callable[[Store], Any]) -> Any:
        try:
            with Store(self.db_path, readonly=True) as store:
                return read(store)
        except MlmlabError as exc:
            self.say(f"{exc} — start a run with `mlmlab run`", error=True)
            return None

    def _load_runs(self, select: int | None = None) -> None:
        runs = self._read_store(lambda store: store.runs())
        if runs is None:
            return
        self._runs = runs
        picker = self.query_one("#run", Select)
        if not runs:
            self.say(f"no runs yet in {self.db_path}: start one with `mlmlab run`", error=True)
            return
        ids = [r["id"] for r in runs]
        if select is None and isinstance(picker.value, int):
            select = picker.value
        self._option_values[picker.id] = ids
        picker.set_options([(Text(f"{r['id']} {r['name']} ({effective_status(r)}, step {r['step']})"), r["id"]) for r in runs])
        picker.value = select if select in ids else ids[-1]

    def _checkpoint_options(self, run_id: int) -> tuple[list, list]:
        rows = self._read_store(lambda store: store.checkpoints(run_id)) or []
        steps = [(Text("latest checkpoint"), LATEST)]
        for r in reversed(rows):
            figures = f" · eval loss {r['eval_loss']:.3f}" if r.get("eval_loss") is not None else ""
            steps.append((Text(f"step {r['step']}{figures}"), r["step"]))
        compare = [(Text("no comparison"), NO_COMPARISON)]
        compare += [(Text(f"vs step {r['step']} of this run"), f"step:{r['step']}") for r in reversed(rows)]
        compare += [(Text(f"vs run {r['id']} {r['name']} (latest)"), f"run:{r['id']}") for r in self._runs if r["id"] != run_id]
        return steps, compare

    def _set_options(self, select: Select, options: list) -> None:
        """Replace a Select's options, keeping its value where it still exists."""
        keep = select.value
        self._option_values[select.id] = [value for _, value in options]
        select.set_options(options)
        if keep in [value for _, value in options]:
            select.value = keep

    def _refresh_choices(self) -> None:
        """Runs and checkpoints appear while the screen is open: keep the pickers current."""
        ids = self._read_store(lambda store: [r["id"] for r in store.runs()])
        if ids is not None and ids != self._option_values.get("run"):
            self._load_runs()
        run_id = self.query_one("#run", Select).value
        if not isinstance(run_id, int):
            return
        steps, compare = self._checkpoint_options(run_id)
        checkpoints = self.query_one("#checkpoint", Select)
        new_checkpoint = [v for _, v in steps] != self._option_values.get(checkpoints.id)
        for select, options in ((checkpoints, steps), (self.query_one("#compare", Select), compare)):
            if [v for _, v in options] != self._option_values.get(select.id):
                self._set_options(select, options)
        if new_checkpoint and checkpoints.value == LATEST:
            self.predict(force=True)  # "latest" now means a newer checkpoint

    @on(Select.Changed, "#run")
    def _run_changed(self) -> None:
        run_id = self.query_one("#run", Select).value
        if not isinstance(run_id, int):
            return
        steps, compare = self._checkpoint_options(run_id)
        for name, options in (("#checkpoint", steps), ("#compare", compare)):
            select = self.query_one(name, Select)
            self._option_values[select.id] = [value for _, value in options]
            select.set_options(options)
        self.predict()

    @on(Select.Changed, "#checkpoint")
    @on(Select.Changed, "#compare")
    def _target_changed(self) -> None:
        comparing = self.query_one("#compare", Select).value != NO_COMPARISON
        self.query_one("#secondary-pane").display = comparing and not self.attention_on
        self.predict()

    def targets(self) -> tuple[Target, Target | None] | None:
        run_id = self.query_one("#run", Select).value
        if not isinstance(run_id, int):
            return None
        step = self.query_one("#checkpoint", Select).value
        primary = Target(run_id, None if step == LATEST or not isinstance(step, int) else step)
        compare = self.query_one("#compare", Select).value
        secondary = None
        if isinstance(compare, str) and compare.startswith("step:"):
            secondary = Target(run_id, int(compare.removeprefix("step:")))
        elif isinstance(compare, str) and compare.startswith("run:"):
            secondary = Target(int(compare.removeprefix("run:")), None)
        return primary, secondary

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
        self.masked = masked
        self.query_one(MaskedSentence).show(masked)
        self.query_one("#model-input", Static).update(model_input_text(masked, None))
        if echo:
            box = self.query_one(Input)
            self._echo = masked.notation()
            box.value = self._echo
        self.predict()

    @on(MaskedSentence.Edited)
    def _edited(self, event: MaskedSentence.Edited) -> None:
        self._set_masked(event.masked, echo=True)

    @on(MaskedSentence.Problem)
    def _problem(self, event: MaskedSentence.Problem) -> None:
        self.say(event.text, error=True)

    @on(MaskedSentence.RandomRequested)
    def _random(self, event: MaskedSentence.RandomRequested) -> None:
        self.predict(draw=(random.randrange(2**31), event.around))

    # Predictions ---------------------------------------------------------------------------

    def predict(self, draw: tuple[int, int] | None = None, force: bool = False) -> None:
        """Ask the worker about the current sentence; stale answers are dropped when they arrive."""
        targets = self.targets()
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

    def _cache(self) -> PredictorCache:
        with self._cache_lock:
            if self._predictors is None:
                from mlmlab.prediction import PredictorCache, use_prediction_threads

                use_prediction_threads()  # the app's process runs no training: runs are subprocesses
                self._predictors = PredictorCache(size=4)
            return self._predictors

    @work(thread=True, exclusive=True, group="predict", exit_on_error=False, description="predict masked positions")
    def _predict(self, request: Request) -> None:
        worker = get_current_worker()

        def loading(text: str) -> None:
            if not worker.is_cancelled:
                self.post_message(self.Loading(request.serial, text))

        try:
            outcome = answer(request, self._cache(), loading)
        except MlmlabError as exc:
            if not worker.is_cancelled:
                self.post_message(self.Failed(request.serial, str(exc)))
            return
        if not worker.is_cancelled:
            self.post_message(self.Ready(outcome))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "predict" and event.state == WorkerState.ERROR:
            error = event.worker.error
            self.say(f"prediction failed (a bug; please report it): {type(error).__name__}: {error}", error=True)

    @on(Loading)
    def _loading(self, event: Loading) -> None:
        if event.serial == self.serial:
            self.say(event.text)

    @on(Failed)
    def _failed(self, event: Failed) -> None:
        if event.serial == self.serial:
            self._asked = None  # asking again may succeed (a checkpoint may have been written since)
            self.say(event.text, error=True)
            self._clear_results()

    @on(Ready)
    def _ready(self, event: Ready) -> None:
        outcome = event.outcome
        if outcome.serial != self.serial:
            return
        self.outcome = outcome
        if outcome.masked != self.masked:  # a random draw: show it and write it into the box
            self.masked = outcome.masked
            self.query_one(MaskedSentence).show(outcome.masked)
            self._echo = outcome.masked.notation()
            self.query_one(Input).value = self._echo
        prediction = outcome.primary.prediction
        notes = list(prediction.notes)
        mode = "one at a time, most confident first" if prediction.mode == FILL_ITERATIVE else "all at once"
        self.say(" · ".join([f"{len(prediction.positions)} hidden · top-{self.top_k} · fill {mode}", *notes]))
        self.query_one("#model-input", Static).update(model_input_text(outcome.masked, prediction))
        comparing = outcome.secondary is not None
        width = 16 if comparing else 30
        self.query_one("#primary", Static).update(side_text(outcome.primary, outcome.disagree, width))
        if outcome.secondary:
            self.query_one("#secondary", Static).update(side_text(outcome.secondary, outcome.disagree, width))
        self.query_one("#secondary-pane").display = comparing and not self.attention_on
        self._draw_attention()

    def _clear_results(self) -> None:
        self.outcome = None
        for name in ("#primary", "#secondary", "#attention"):
            self.query_one(name, Static).update(Text(""))

    def _draw_attention(self) -> None:
        if not self.attention_on:
            return
        pane = self.query_one("#attention", Static)
        outcome = self.outcome
        if outcome is None or outcome.attention is None:
            pane.update(Text("attention: waiting for a prediction …", style="dim"))
            return
        pane.update(heatmap_text(outcome.attention, outcome.masked, self.query_one(MaskedSentence).cursor))

    @on(MaskedSentence.CursorMoved)
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
            self.query_one("#secondary-pane").display = self.query_one("#compare", Select).value != NO_COMPARISON
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
