"""The explorer's sentence: one cell per position, to move along, hide and show with keys or clicks.

It only edits the `MaskedText` it shows and says so in messages (`SentenceEdited`, ...) that the
screen handles; predictions are the screen's business.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.reactive import reactive
from textual.widget import Widget

from mlmlab.errors import MlmlabError
from mlmlab.notation import MaskedText, Slot
from mlmlab.tui.formatting import KIND_STYLES
from mlmlab.tui.messages import RandomMaskRequested, SentenceCursorMoved, SentenceEdited, SentenceProblem
from mlmlab.vocab import token_glyph


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
    def _glyph(slot: Slot) -> str:
        """A hidden space is marked so it can be seen; "?" is a [MASK] with no known answer."""
        return "?" if slot.answer is None else token_glyph(slot.answer, space=slot.hidden)

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
        self.post_message(SentenceCursorMoved(index))

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
            self.post_message(SentenceProblem("type a sentence first"))
            return
        try:
            masked = change(self.masked)
        except MlmlabError as exc:
            self.post_message(SentenceProblem(str(exc)))
            return
        self.show(masked)
        self.post_message(SentenceEdited(masked))

    def action_toggle(self) -> None:
        self._edit(lambda m: m.toggle(self.cursor))

    def action_toggle_word(self) -> None:
        self._edit(lambda m: m.toggle_word(self.cursor))

    def action_clear(self) -> None:
        self._edit(lambda m: m.unmasked())

    def action_random(self) -> None:
        if not self.masked:
            self.post_message(SentenceProblem("type a sentence first"))
            return
        self.post_message(RandomMaskRequested(self.cursor))
