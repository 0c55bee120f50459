"""The mask notation shared by `mlmlab predict` and the app: which characters of a sentence to hide.

    The {quick} brown fox        braces hide the enclosed text and keep it as the known answer
    To be or [MASK] to be        [MASK] hides one position whose answer is unknown
    a \\{literal\\} brace          a backslash before { } [ or \\ makes it an ordinary character

For a char-level model every hidden character is one masked position, so `{quick}` is five. For a
subword model `[MASK]` is one subword and braces hide every subword their text overlaps
(`mlmlab.predict.alignment`); the slots stay characters either way.
A backslash before any other character is itself an ordinary character (so `C:\\path` needs no
escaping). This module is plain Python: the app parses as the user types without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlmlab.errors import NotationError
from mlmlab.tokenizer import MASK as MASK_TEXT  # the tokenizer is plain Python too
from mlmlab.vocab import MASKED, VISIBLE

ESCAPABLE = "{}[\\"


@dataclass(frozen=True)
class Slot:
    """One position of the sentence."""

    answer: str | None  # the character that belongs here; None for a [MASK] with no known answer
    kind: str = VISIBLE  # VISIBLE, or how it is hidden: MASKED, RANDOM (another token shown), KEEP (shown as is)
    shown: str | None = None  # for RANDOM: the token the model sees instead of the answer
    shown_id: int | None = None  # for RANDOM on a subword model: that token's id (its text can be ambiguous)

    @property
    def hidden(self) -> bool:
        return self.kind != VISIBLE


@dataclass(frozen=True)
class MaskedText:
    """A sentence with some positions hidden: what the notation means, and what the app edits."""

    slots: tuple[Slot, ...]

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def hidden(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.hidden]

    def require_hidden(self) -> "MaskedText":
        """This text, or a NotationError when nothing in it is hidden (there is nothing to predict)."""
        if not self.hidden:
            raise NotationError("nothing is masked: wrap text in {braces} or write [MASK] where a character is hidden")
        return self

    @property
    def text(self) -> str:
        """The sentence with every known answer in place and [MASK] where none is known."""
        return "".join(MASK_TEXT if s.answer is None else s.answer for s in self.slots)

    def toggle(self, index: int) -> "MaskedText":
        """Hide a visible position as [MASK], or show a hidden one again (a [MASK] without answer stays)."""
        slot = self.slots[index]
        if slot.answer is None:
            raise NotationError(f"position {index} is a [MASK] with no known text to show")
        kind = VISIBLE if slot.hidden else MASKED
        return self._with({index: Slot(slot.answer, kind)})

    def toggle_word(self, index: int) -> "MaskedText":
        """Hide the word under `index` (letters, digits, apostrophes), or show it if it is all hidden."""
        span = self.word_at(index)
        if not span:
            raise NotationError(f"position {index} is not inside a word")
        targets = [i for i in span if self.slots[i].answer is not None]
        hide = not all(self.slots[i].hidden for i in targets)
        return self._with({i: Slot(self.slots[i].answer, MASKED if hide else VISIBLE) for i in targets})

    def word_at(self, index: int) -> range:
        def in_word(i: int) -> bool:
            answer = self.slots[i].answer
            return answer is None or answer.isalnum() or answer in "'_-"

        if not 0 <= index < len(self.slots) or not in_word(index):
            return range(0)
        start, end = index, index + 1
        while start > 0 and in_word(start - 1):
            start -= 1
        while end < len(self.slots) and in_word(end):
            end += 1
        return range(start, end)

    def unmasked(self) -> "MaskedText":
        """Every known position visible again; [MASK] positions without an answer stay."""
        return MaskedText(tuple(s if s.answer is None else Slot(s.answer) for s in self.slots))

    def with_slots(self, changes: dict[int, Slot]) -> "MaskedText":
        return self._with(changes)

    def _with(self, changes: dict[int, Slot]) -> "MaskedText":
        slots = list(self.slots)
        for i, slot in changes.items():
            slots[i] = slot
        return replace(self, slots=tuple(slots))

    def notation(self) -> str:
        """Back to the notation (random and unchanged positions are written as plain braces)."""
        out: list[str] = []
        open_brace = False
        for slot in self.slots:
            braced = slot.hidden and slot.answer is not None
            if braced != open_brace:
                out.append("{" if braced else "}")
                open_brace = braced
            out.append(MASK_TEXT if slot.answer is None else _escape(slot.answer))
        if open_brace:
            out.append("}")
        return "".join(out)


def _escape(ch: str) -> str:
    return "\\" + ch if ch in ESCAPABLE else ch


def parse(text: str, require_mask: bool = True) -> MaskedText:
    """Parse the notation. Errors name the problem and its column (1-based) in one line."""
    if not text.strip():
        raise NotationError("empty text: type a sentence, e.g. 'The {quick} brown fox'")
    slots: list[Slot] = []
    brace_at: int | None = None  # column of the open brace, while inside braces
    brace_start = 0
    i = 0
    while i < len(text):
        ch = text[i]
        column = i + 1
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPABLE:
            slots.append(Slot(text[i + 1], MASKED if brace_at else VISIBLE))
            i += 2
            continue
        if text.startswith(MASK_TEXT, i):
            if brace_at:
                raise NotationError(f"[MASK] at column {column} is inside braces opened at column {brace_at}: braces already hide their text")
            slots.append(Slot(None, MASKED))
            i += len(MASK_TEXT)
            continue
        if ch == "{":
            if brace_at:
                raise NotationError(f"brace at column {column} opens inside the brace opened at column {brace_at}: braces do not nest (write \\{{ for a literal brace)")
            brace_at, brace_start = column, len(slots)
        elif ch == "}":
            if not brace_at:
                raise NotationError(f"closing brace at column {column} has no opening brace (write \\}} for a literal brace)")
            if len(slots) == brace_start:
                raise NotationError(f"empty braces at column {brace_at} hide nothing")
            brace_at = None
        else:
            slots.append(Slot(ch, MASKED if brace_at else VISIBLE))
        i += 1
    if brace_at:
        raise NotationError(f"brace opened at column {brace_at} is never closed (write \\{{ for a literal brace)")
    masked = MaskedText(tuple(slots))
    return masked.require_hidden() if require_mask else masked

