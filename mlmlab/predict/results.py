"""What a prediction answers, as plain data: no torch here, so the app can hold and draw results.

For a subword model a position is a token, not a character: each `PositionPrediction` says which
characters of the sentence it covers (`span`) so the CLI and the app draw it under them, and a
comparison of a char run with a subword run lines the two up by characters (`compare_rows`).

Probabilities are the model's softmax over its whole vocabulary, exactly what training's loss
sees, so the loss here is comparable with the run's eval loss. Candidates are listed among real
tokens only: masking never asks the model to produce [PAD], [MASK] or [UNK].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmlab.errors import MlmlabError
from mlmlab.notation import MaskedText
from mlmlab.vocab import TOKEN_GLYPHS, token_glyph

WHITESPACE_GLYPHS = {ch: TOKEN_GLYPHS[ch] for ch in " \n\t"}


def glyph(token: str) -> str:
    """A token as printable text: `vocab.token_glyph` for one character or a special token; in a longer
    piece each whitespace character is drawn visibly the same way (" the" -> "␣the")."""
    if len(token) <= 1 or token in TOKEN_GLYPHS:
        return token_glyph(token)
    return "".join(WHITESPACE_GLYPHS.get(ch, ch) for ch in token)


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a run, as the store lists it."""

    run_id: int
    run_name: str
    step: int
    path: Path
    eval_loss: float | None = None
    eval_acc: float | None = None

    @property
    def label(self) -> str:
        return f"run {self.run_id} {self.run_name} @ step {self.step}"

    @property
    def short_label(self) -> str:
        return f"run {self.run_id}"

    def to_json(self) -> dict[str, Any]:
        return {"run": {"id": self.run_id, "name": self.run_name}}


@dataclass(frozen=True)
class ModelDirRef:
    """A local Hugging Face model directory (saved with `save_pretrained`), predicted with in place of a run."""

    path: Path  # the directory, resolved
    architecture: str | None = None  # config.json's first `architectures` entry, e.g. BertForMaskedLM
    run_id = None  # the fields a CheckpointRef has that a directory lacks
    step = None
    eval_loss = None
    eval_acc = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return f"model {self.name}" + (f" ({self.architecture})" if self.architecture else "")

    @property
    def short_label(self) -> str:
        return f"model {self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"model": {"path": str(self.path), "name": self.name, "architecture": self.architecture}}


@dataclass(frozen=True)
class Candidate:
    token: str
    probability: float
    token_id: int | None = None


@dataclass(frozen=True)
class PositionPrediction:
    index: int  # position in the sentence (0-based, the whole sentence, not the window)
    answer: str | None  # the known answer, None for [MASK]
    shown: str  # what the model saw here: [MASK], a random token, or the character itself
    kind: str  # MASKED, RANDOM or KEEP
    top: tuple[Candidate, ...]  # best first
    answer_rank: int | None = None  # 1 = the model's first choice; None when unknown or not in the vocabulary
    answer_probability: float | None = None
    fill_pass: int | None = None  # iterative mode: the pass (1-based) that filled this position
    span: tuple[int, int] | None = None  # subword: the characters [start, end) this token covers; None: `index` alone
    answer_id: int | None = None  # the answer's token id, when the model can produce it

    @property
    def choice(self) -> str:
        return self.top[0].token

    @property
    def slots(self) -> range:
        """The sentence's characters this position covers."""
        return range(self.index, self.index + 1) if self.span is None else range(*self.span)

    @property
    def correct(self) -> bool | None:
        if self.answer is None:
            return None
        if self.answer_id is not None and self.top[0].token_id is not None:
            return self.top[0].token_id == self.answer_id  # readable pieces can repeat ("." and "##.")
        return self.choice == self.answer


@dataclass(frozen=True)
class FillPass:
    """One pass of iterative filling: the position filled and what the model sees afterwards."""

    index: int
    token: str
    probability: float
    inputs: tuple[str, ...]  # the window's tokens after this fill


@dataclass(frozen=True)
class Prediction:
    masked: MaskedText
    mode: str  # vocab.FILL_ALL or FILL_ITERATIVE
    positions: tuple[PositionPrediction, ...]
    window: tuple[int, int]  # [start, end) of the sentence the model read
    model_input: tuple[str, ...]  # the tokens the model saw in the window, before any filling
    notes: tuple[str, ...] = ()
    passes: tuple[FillPass, ...] = ()
    step: int | None = None
    tokenizer: str = "char"  # the model's tokenizer kind
    spans: tuple[tuple[int, int], ...] = ()  # subword: the characters each token of the window covers

    @property
    def subword(self) -> bool:
        return self.tokenizer != "char"

    @property
    def window_slots(self) -> tuple[int, int]:
        """The characters [start, end) of the sentence the model read."""
        if not self.subword:
            return self.window
        if not self.spans:
            return (0, 0)
        return self.spans[0][0], max(end for _, end in self.spans)

    @property
    def filled(self) -> str:
        """The sentence with each hidden position replaced by the model's choice."""
        if not self.subword:
            chosen = {p.index: p.choice for p in self.positions}
            return "".join(chosen.get(i, s.answer or "") for i, s in enumerate(self.masked.slots))
        return "".join(text for text, _ in self.segments())

    def segments(self) -> list[tuple[str, PositionPrediction | None]]:
        """The filled sentence in pieces: the sentence's own text (None), and each position's choice
        in place of the characters it covers. A piece's leading space is dropped where the sentence
        already has one (WordPiece's offsets leave the space out of the piece)."""
        by_start: dict[int, list[PositionPrediction]] = {}
        for p in self.positions:
            by_start.setdefault(p.slots.start, []).append(p)
        out: list[tuple[str, PositionPrediction | None]] = []
        slots = self.masked.slots
        i = 0
        while i < len(slots):
            if i not in by_start:
                out.append((slots[i].answer if slots[i].answer is not None else "?", None))
                i += 1
                continue
            group = by_start[i]
            for p in group:
                text = p.choice
                before = "".join(t for t, _ in out)
                if text.startswith(" ") and (not before or before[-1].isspace()) and not (slots[i].answer or "").isspace():
                    text = text[1:]
                out.append((text, p))
            i = max(i + 1, max(p.slots.stop for p in group))
        return out

    @property
    def answered(self) -> list[PositionPrediction]:
        return [p for p in self.positions if p.answer_probability is not None]

    @property
    def loss(self) -> float | None:
        """Mean cross-entropy over the positions whose answer is known and in the vocabulary."""
        answered = self.answered
        if not answered:
            return None
        return sum(-math.log(max(p.answer_probability, 1e-45)) for p in answered) / len(answered)

    @property
    def n_correct(self) -> int:
        return sum(bool(p.correct) for p in self.positions)

    @property
    def n_known(self) -> int:
        return sum(p.answer is not None for p in self.positions)

    def to_json(self) -> dict[str, Any]:
        answer = self._json()
        if self.subword:  # char runs keep their shape
            start, end = self.window
            answer["tokenizer"] = self.tokenizer
            answer["window_chars"] = list(self.window_slots)
            answer["tokens"] = [{"index": i, "token": t, "span": list(span)}
                                for i, t, span in zip(range(start, end), self.model_input, self.spans)]
        return answer

    def _json(self) -> dict[str, Any]:
        return {
            "text": self.masked.notation(),
            "filled": self.filled,
            "mode": self.mode,
            "checkpoint": self.step,
            "loss": self.loss,
            "correct": self.n_correct,
            "known": self.n_known,
            "window": list(self.window),
            "notes": list(self.notes),
            "positions": [_position_json(p, self.masked) for p in self.positions],
        }


def _position_json(p: PositionPrediction, masked: MaskedText) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if p.span is not None:
        extra = {"span": list(p.span), "characters": span_text(masked, p.span), "answer_id": p.answer_id}
    return {
        "index": p.index,
        "answer": p.answer,
        "shown": p.shown,
        "prediction": p.choice,
        "correct": p.correct,
        "answer_rank": p.answer_rank,
        "answer_probability": p.answer_probability,
        "top_k": [{"token": c.token, "probability": c.probability} for c in p.top],
        **({"fill_pass": p.fill_pass} if p.fill_pass is not None else {}),
        **extra,
    }


def span_text(masked: MaskedText, span: tuple[int, int]) -> str:
    """The sentence's characters under `span` (an answer-less [MASK] as itself)."""
    return "".join("[MASK]" if s.answer is None else s.answer for s in masked.slots[span[0] : span[1]])


@dataclass(frozen=True)
class AttentionMap:
    tokens: tuple[str, ...]  # the window's tokens as the model saw them
    weights: tuple[tuple[float, ...], ...]  # [query][key], each row sums to 1 (an HF model's [CLS]/[SEP] take the rest)
    offset: int  # sentence index of the window's first token
    layer: int | None  # None: averaged over layers
    head: int | None  # None: averaged over heads
    n_layers: int
    n_heads: int
    spans: tuple[tuple[int, int], ...] = ()  # subword: the characters each token covers
    kinds: tuple[str, ...] = ()  # subword: how each token is hidden (vocab.VISIBLE when it is not)

    @property
    def subword(self) -> bool:
        return bool(self.spans)

    def index_of_slot(self, slot: int) -> int | None:
        """The window token (sentence token index) covering character `slot`; None outside the window."""
        if not self.subword:
            return slot if self.offset <= slot < self.offset + len(self.tokens) else None
        for local, (start, end) in enumerate(self.spans):
            if start <= slot < end:
                return self.offset + local
        return None


@dataclass(frozen=True)
class ComparisonRow:
    """One stretch of hidden characters, as two predictions (perhaps tokenised differently) fill it."""

    span: tuple[int, int]  # the characters [start, end)
    text: str  # the sentence's characters there ("[MASK]" where no answer is known)
    left: tuple[PositionPrediction, ...]
    right: tuple[PositionPrediction, ...]
    left_fill: str
    right_fill: str

    @property
    def agree(self) -> bool:
        return self.left_fill.strip() == self.right_fill.strip()


def same_positions(a: Prediction, b: Prediction) -> bool:
    """Whether two predictions read the sentence in the same positions (same tokenisation of the hidden part)."""
    return [(p.index, tuple(p.slots)) for p in a.positions] == [(p.index, tuple(p.slots)) for p in b.positions]


def compare_rows(a: Prediction, b: Prediction) -> list[ComparisonRow]:
    """The hidden positions of both predictions grouped by the characters they cover: positions that
    overlap or touch (in either prediction) share a row, so a char run's five letters and a subword
    run's pieces of the same hidden word are one row."""
    if a.masked.hidden != b.masked.hidden:
        raise MlmlabError("the two predictions are of differently masked sentences")
    items = sorted([(p.slots.start, max(p.slots.stop, p.slots.start + 1), 0, p) for p in a.positions]
                   + [(p.slots.start, max(p.slots.stop, p.slots.start + 1), 1, p) for p in b.positions],
                   key=lambda t: (t[0], t[1], t[2]))
    groups: list[list] = []
    for item in items:
        if groups and item[0] <= groups[-1][0][1]:  # overlapping or touching: one stretch
            groups[-1][0][1] = max(groups[-1][0][1], item[1])
            groups[-1][1].append(item)
        else:
            groups.append([[item[0], item[1]], [item]])
    fills = [{id(p): t for t, p in pred.segments() if p is not None} if pred.subword else None for pred in (a, b)]
    rows = []
    for (start, end), members in groups:
        sides = [tuple(m[3] for m in members if m[2] == side) for side in (0, 1)]
        texts = []
        for side, positions in enumerate(sides):
            fill = fills[side]
            texts.append("".join(fill.get(id(p), p.choice) if fill is not None else p.choice for p in positions))
        rows.append(ComparisonRow((start, end), span_text(a.masked, (start, end)), sides[0], sides[1], texts[0], texts[1]))
    return rows


def disagreements(a: Prediction, b: Prediction) -> list[int]:
    """Positions of `a` where two predictions of the same masked sentence chose differently: position
    by position when both read it the same way, else by the characters each row of `compare_rows` fills."""
    return disagreement_sides(a, b)[0]


def disagreement_sides(a: Prediction, b: Prediction) -> tuple[list[int], list[int]]:
    """(positions of `a`, positions of `b`) where the two disagree."""
    if a.masked.hidden != b.masked.hidden:
        raise MlmlabError("the two predictions are of differently masked sentences")
    if same_positions(a, b):
        theirs = {p.index: p.choice for p in b.positions}
        differ = [p.index for p in a.positions if theirs.get(p.index) != p.choice]
        return differ, differ
    rows = [r for r in compare_rows(a, b) if not r.agree]
    return [p.index for r in rows for p in r.left], [p.index for r in rows for p in r.right]
