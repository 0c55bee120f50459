"""What a prediction answers, as plain data: no torch here, so the app can hold and draw results.

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


@dataclass(frozen=True)
class Candidate:
    token: str
    probability: float


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

    @property
    def choice(self) -> str:
        return self.top[0].token

    @property
    def correct(self) -> bool | None:
        return None if self.answer is None else self.choice == self.answer


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

    @property
    def filled(self) -> str:
        """The sentence with each hidden position replaced by the model's choice."""
        chosen = {p.index: p.choice for p in self.positions}
        return "".join(chosen.get(i, s.answer or "") for i, s in enumerate(self.masked.slots))

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
            "positions": [_position_json(p) for p in self.positions],
        }


def _position_json(p: PositionPrediction) -> dict[str, Any]:
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
    }


@dataclass(frozen=True)
class AttentionMap:
    tokens: tuple[str, ...]  # the window's tokens as the model saw them
    weights: tuple[tuple[float, ...], ...]  # [query][key], each row sums to 1
    offset: int  # sentence index of the window's first token
    layer: int | None  # None: averaged over layers
    head: int | None  # None: averaged over heads
    n_layers: int
    n_heads: int


def disagreements(a: Prediction, b: Prediction) -> list[int]:
    """Sentence positions where two predictions of the same masked sentence chose differently."""
    if a.masked.hidden != b.masked.hidden:
        raise MlmlabError("the two predictions are of differently masked sentences")
    theirs = {p.index: p.choice for p in b.positions}
    return [p.index for p in a.positions if theirs.get(p.index) != p.choice]
