"""Every message the app's widgets and screens post, in one module, as dataclasses.

One place to read what travels between a worker and the UI, and what each carries. A message
defined here has a plain handler name (`on_polled`, not `on_live_screen_polled`); handlers use
`@on(Polled)`. A message that only reports the latest state of something may implement
`can_replace`, so a burst of them is merged in the queue instead of each being handled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message


@dataclass
class Polled(Message):
    """What one database read of a `LiveScreen` found; posted from its worker thread to the screen.

    Not replaceable: a plot screen's reads are incremental (each carries only the points after
    the previous one), so every one must be shown.
    """

    poll: Any


# --- the mask explorer: its sentence widget, its pickers, and its prediction worker --------------
# Fields typed Any hold explorer types (notation.MaskedText, explorer.worker.Outcome and Choices);
# naming them here would make every screen import the explorer's modules.


@dataclass
class SentenceEdited(Message):
    """The user hid or showed positions of the explorer's sentence."""

    masked: Any  # notation.MaskedText


@dataclass
class RandomMaskRequested(Message):
    """Hide positions as training does, around position `around`; only the worker knows the run's vocabulary."""

    around: int


@dataclass
class SentenceProblem(Message):
    """An edit of the sentence that cannot be done, said in one line."""

    text: str


@dataclass
class SentenceCursorMoved(Message):
    index: int


@dataclass
class ChoicesRead(Message):
    """The runs and the shown run's checkpoints, read by the explorer pickers' worker."""

    choices: Any  # explorer.worker.Choices


@dataclass
class ChoicesProblem(Message):
    """The explorer's pickers could not list runs (no database, no runs, a locked file), in one line."""

    text: str


@dataclass
class TargetChosen(Message):
    """The explorer's pickers changed what to predict with; `force`: ask again even if unchanged."""

    force: bool = False


@dataclass
class PredictionLoading(Message):
    serial: int  # the request's: an answer to an older request is dropped
    text: str


@dataclass
class PredictionFailed(Message):
    serial: int
    text: str


@dataclass
class PredictionReady(Message):
    outcome: Any  # explorer.worker.Outcome
