"""Which tokens a model reads for a masked sentence, and which characters of it each token covers.

The notation's slots are characters whatever the model; this step turns them into the model's
positions (*units*) and back:

* char tokenizer: the identity, one unit per slot, ids through the vocabulary's `stoi`;
* subword tokenizer: the sentence is written out with every known answer in place and the literal
  `[MASK]` where no answer is known (the tokenizer reads it as MASK_ID), and encoded with offsets.
  Each token covers the slots its offsets overlap. A token is hidden when any of its slots is, and
  its answer is the token itself. A hidden token that also covers visible characters (a brace cut
  it) is hidden whole and named in a note; whitespace inside a piece (BPE's leading space) does not
  count as cut, since hiding a word hides the space these tokenizers glue to it.

The special ids are mlmlab's (0-2 for every kind) unless the tokenizer names its own as
`specials` (a Hugging Face tokenizer: its mask token, its [UNK], every special id), so the same
alignment serves any local masked LM. Plain Python (no torch): the predictor, the CLI and the app
all read the same alignment.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlmlab.notation import MASK_TEXT, MaskedText
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, UNK, UNK_ID
from mlmlab.vocab import KEEP, MASKED, RANDOM, VISIBLE


@dataclass(frozen=True)
class Specials:
    """The ids a tokenizer reserves, and how its mask and unknown tokens are spelled."""

    mask_id: int = MASK_ID
    unk_id: int | None = UNK_ID  # None: a byte-level vocabulary needs none
    mask_text: str = MASK_TEXT  # what the written sentence holds where [MASK] is
    unk_text: str = UNK
    ids: frozenset[int] = frozenset(range(N_SPECIAL))  # never an answer, never a candidate

    def special(self, token_id: int) -> bool:
        return token_id in self.ids


MLMLAB_SPECIALS = Specials()


def specials_of(tokenizer) -> Specials:
    return getattr(tokenizer, "specials", None) or MLMLAB_SPECIALS


@dataclass(frozen=True)
class Unit:
    """One position the model reads."""

    span: tuple[int, int]  # the slots [start, end) it covers (start == end: no character, e.g. an empty piece)
    token_id: int  # the sentence's own token here: the answer's id, MASK_ID for a [MASK] without answer
    kind: str  # VISIBLE, or how it is hidden: MASKED, RANDOM, KEEP
    shown_id: int  # what the model reads here
    answer: str | None  # the known answer as text (the character, or the readable piece); None for [MASK]
    answer_id: int | None  # the answer's id; None when unknown or one the model cannot produce ([UNK])
    text: str  # the sentence's characters under the span

    @property
    def hidden(self) -> bool:
        return self.kind != VISIBLE

    @property
    def slots(self) -> range:
        return range(*self.span)


@dataclass(frozen=True)
class Cut:
    """A hidden piece that also covers visible characters: it is hidden whole."""

    unit: int
    piece: str  # the readable piece
    visible: str  # the visible characters it hides with it
    slots: tuple[int, ...]  # their positions


@dataclass(frozen=True)
class Alignment:
    masked: MaskedText
    units: tuple[Unit, ...]
    subword: bool
    cuts: tuple[Cut, ...] = ()
    uncovered: tuple[int, ...] = ()  # hidden slots no token covers (whitespace WordPiece drops)
    _slot_unit: tuple[int, ...] = ()  # per slot: the unit covering it, or the next one
    specials: Specials = MLMLAB_SPECIALS

    def __len__(self) -> int:
        return len(self.units)

    @property
    def hidden(self) -> list[int]:
        return [i for i, u in enumerate(self.units) if u.hidden]

    @property
    def spans(self) -> tuple[tuple[int, int], ...]:
        return tuple(u.span for u in self.units)

    def unit_at(self, slot: int) -> int:
        """The unit covering `slot` (or the nearest one after it, or the last)."""
        if not self.subword:
            return slot
        if not self._slot_unit:
            return 0
        return self._slot_unit[max(0, min(slot, len(self._slot_unit) - 1))]

    def slot_span(self, start: int, end: int) -> tuple[int, int]:
        """The slots [first, last) that units start..end cover."""
        spans = [u.span for u in self.units[start:end]]
        if not spans:
            return (0, 0)
        return spans[0][0], max(s[1] for s in spans)

    def notes(self, start: int = 0, end: int | None = None) -> list[str]:
        """What the user should know about units start..end: characters read as [UNK], answers the model
        cannot produce, and (subword) pieces hidden whole or whitespace not predicted."""
        end = len(self.units) if end is None else end
        unseen_visible, unseen_answers, specials = [], [], []
        reserved = self.specials
        for i, u in enumerate(self.units[start:end], start):
            if u.kind in (VISIBLE, KEEP) and u.token_id == reserved.unk_id:
                unseen_visible.append(u.text)
            elif self.subword and u.kind == VISIBLE and reserved.special(u.token_id):
                specials.append(f"{u.text!r} at {_where(u.span)}")
            if u.hidden and u.answer is not None and u.answer_id is None:
                unseen_answers.append(f"{u.text!r} at {_where(u.span) if self.subword else i}")
        notes = []
        if unseen_visible:
            chars = "".join(dict.fromkeys(unseen_visible))
            what = "text" if self.subword else "characters"
            notes.append(f"{what} the model never saw are read as {reserved.unk_text}: {chars!r}")
        if unseen_answers:
            notes.append(f"answers the model cannot produce (not in its vocabulary): {', '.join(unseen_answers)}")
        if specials:
            notes.append(f"read as special tokens, not as text: {', '.join(specials)}")
        cuts = [c for c in self.cuts if start <= c.unit < end]
        if cuts:
            each = "; ".join(f"{c.piece!r} also hides {c.visible!r} ({_where((c.slots[0], c.slots[-1] + 1))})" for c in cuts)
            notes.append(f"a brace cuts a subword, so each is hidden whole: {each}")
        if self.uncovered:
            where = ", ".join(str(i) for i in self.uncovered)
            notes.append(f"hidden whitespace this tokenizer does not encode is not predicted (characters {where})")
        return notes


def _where(span: tuple[int, int]) -> str:
    start, end = span
    return f"character {start}" if end - start <= 1 else f"characters {start}-{end - 1}"


def is_subword(tokenizer) -> bool:
    return getattr(tokenizer, "kind", "char") != "char"


def align(masked: MaskedText, tokenizer) -> Alignment:
    """The units a model with `tokenizer` reads for `masked` (see the module docstring)."""
    if not is_subword(tokenizer):
        return _align_chars(masked, tokenizer)
    return _align_subwords(masked, tokenizer)


def _align_chars(masked: MaskedText, tokenizer) -> Alignment:
    stoi, reserved = tokenizer.stoi, specials_of(tokenizer)
    units = []
    for i, slot in enumerate(masked.slots):
        token_id = reserved.mask_id if slot.answer is None else stoi.get(slot.answer, reserved.unk_id)
        if slot.kind == MASKED:
            shown = reserved.mask_id
        elif slot.kind == RANDOM:
            shown = stoi.get(slot.shown or "", reserved.unk_id)
        else:
            shown = token_id
        answer_id = stoi.get(slot.answer) if slot.answer is not None else None
        units.append(Unit((i, i + 1), token_id, slot.kind, shown, slot.answer, answer_id, slot.answer or ""))
    return Alignment(masked, tuple(units), subword=False, specials=reserved)


def written(masked: MaskedText, mask_text: str = MASK_TEXT) -> tuple[str, list[int]]:
    """The sentence as the tokenizer reads it (`mask_text`, the tokenizer's own mask token, where
    [MASK] is), and the slot of each of its characters."""
    parts, owner = [], []
    for i, slot in enumerate(masked.slots):
        text = mask_text if slot.answer is None else slot.answer
        parts.append(text)
        owner.extend([i] * len(text))
    return "".join(parts), owner


def _align_subwords(masked: MaskedText, tokenizer) -> Alignment:
    reserved = specials_of(tokenizer)
    text, owner = written(masked, reserved.mask_text)
    ids, offsets = tokenizer.encode_offsets(text)
    slots = masked.slots
    n = len(slots)
    units, cuts = [], []
    covered = [False] * n
    for index, (token_id, (start, end)) in enumerate(zip(ids, offsets)):
        if end > start:
            span = (owner[start], owner[end - 1] + 1)
        else:
            at = owner[start] if start < len(owner) else n
            span = (at, at)
        under = slots[span[0] : span[1]]
        for i in range(*span):
            covered[i] = True
        chars = "".join(MASK_TEXT if s.answer is None else s.answer for s in under)
        kinds = {s.kind for s in under}
        if any(s.answer is None for s in under):  # the literal [MASK]: one unknown subword
            units.append(Unit(span, token_id, MASKED, reserved.mask_id, None, None, chars))
            continue
        kind = next((k for k in (MASKED, RANDOM, KEEP) if k in kinds), VISIBLE)
        if kind == MASKED:
            shown = reserved.mask_id
        elif kind == RANDOM:
            shown = _random_shown(tokenizer, [s for s in under if s.kind == RANDOM][0], reserved)
        else:
            shown = token_id
        producible = not reserved.special(token_id)
        answer = tokenizer.token(token_id) if producible else chars
        units.append(Unit(span, token_id, kind, shown, answer, token_id if producible else None, chars))
        if kind != VISIBLE:
            visible = [i for i in range(*span) if not slots[i].hidden and not (slots[i].answer or "").isspace()]
            if visible:
                cuts.append(Cut(index, tokenizer.token(token_id), "".join(slots[i].answer for i in visible), tuple(visible)))
    uncovered = tuple(i for i, s in enumerate(slots) if s.hidden and not covered[i])
    slot_unit, j = [], 0
    for i in range(n):  # the first unit that ends after each slot: the one covering it, or the next
        while j < len(units) - 1 and units[j].span[1] <= i:
            j += 1
        slot_unit.append(j)
    return Alignment(masked, tuple(units), True, tuple(cuts), uncovered, tuple(slot_unit), reserved)


def _random_shown(tokenizer, slot, reserved: Specials) -> int:
    if slot.shown_id is not None:
        return slot.shown_id
    found = tokenizer.ids_of([slot.shown or ""])
    fallback = reserved.unk_id if reserved.unk_id is not None else reserved.mask_id
    return found[0] if found else fallback
