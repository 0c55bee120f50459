"""What the runs table shows: its columns (fewer on a narrow terminal), its status filters and sorts,
and one run's row, with the filter words it matches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from mlmlab.budget import run_budget
from mlmlab.tui.formatting import budget_text, count_text, fit, fmt_duration, fmt_num, run_duration, status_text
from mlmlab.vocab import ACTIVE, COMPLETED, CRASHED, FAILED, STOPPED

# (key, header, width): fixed widths so live values do not make columns jump; None grows with the
# content. A value wider than its cell is abbreviated or visibly cut (`fit`), never shown as a shorter number.
COLUMNS = [
    ("mark", " ", 1), ("id", "id", None), ("name", "name", None), ("status", "status", 11), ("progress", "progress", 21),
    ("train_loss", "train loss", 10), ("eval_loss", "eval loss", 9), ("eval_acc", "eval acc", 8),
    ("tok_s", "tok/s", 8), ("duration", "duration", 8), ("device", "device", 6), ("started", "started", 11),
    ("tags", "tags", None),
]
# On a narrow terminal these columns go first, in this order, so the rest fit without scrolling
# sideways (the run detail still shows all of it).
DROP_WHEN_NARROW = ["started", "device", "duration", "tags", "train_loss", "tok_s", "eval_loss"]
WIDTHS = {key: width for key, _, width in COLUMNS}
GROWING_WIDTH_GUESS = {"id": 3, "name": 10, "tags": 6}
BAR_CELLS, PROGRESS_LABEL_CELLS = 6, 14  # the progress column: bar, a space, the label


def columns_for(width: int) -> list[tuple[str, str, int | None]]:
    """The COLUMNS that fit `width` cells (each column also takes 2 cells of padding)."""
    shown = list(COLUMNS)
    for key in DROP_WHEN_NARROW:
        needed = sum((w or GROWING_WIDTH_GUESS[k]) + 2 for k, _, w in shown) + 2  # + the scrollbar
        if needed <= width:
            break
        shown = [c for c in shown if c[0] != key]
    return shown


SORTS = ["id", "name", "status", "progress", "eval_loss", "eval_acc", "started"]
STATUS_FILTERS = {
    "all": None,
    "active": set(ACTIVE),
    "completed": {COMPLETED},
    "stopped": {STOPPED},
    "failed/crashed": {FAILED, CRASHED},
}


@dataclass
class RunRow:
    """What one table row shows: the lean state (every poll) joined with the summary (when it changed)."""

    state: dict[str, Any]
    summary: dict[str, Any]

    @property
    def id(self) -> int:
        return self.state["id"]

    def sort_key(self, column: str) -> Any:
        s, m = self.state, self.summary
        if column == "progress":
            return run_budget(s["status"], s["step"], s["total_steps"], s.get("elapsed") or 0.0, s.get("max_minutes")).fraction
        if column in ("eval_loss", "eval_acc"):
            value = m.get(column)
            return (value is None, value if value is not None else 0)
        if column == "started":
            return s.get("started_at") or s.get("created_at") or 0
        return s.get(column) if column in s else m.get(column)

    def matches(self, words: list[str]) -> bool:
        s = self.state
        tags = [t.lower() for t in _tags(s)]
        hay = " ".join([str(s["id"]), s["name"], s["status"], " ".join(tags), s.get("note") or "",
                        self.summary.get("device") or ""]).lower()
        for word in words:
            key, sep, value = word.partition(":")
            if sep and key == "status":
                if not s["status"].startswith(value):
                    return False
            elif sep and key == "tag" or word.startswith("#"):
                want = value if sep else word[1:]
                if not any(t.startswith(want) for t in tags):
                    return False
            elif word not in hay:
                return False
        return True

    def cells(self, marked: bool, now: float) -> list[Any]:
        s, m = self.state, self.summary
        return [
            Text("●", style="bold yellow") if marked else Text(" "),
            Text(str(s["id"]), justify="right"),
            Text(s["name"]),
            status_text(s["status"]),
            budget_text(s, BAR_CELLS, PROGRESS_LABEL_CELLS, now),
            _number(m.get("train_loss"), ".3f", WIDTHS["train_loss"]),
            _number(m.get("eval_loss"), ".3f", WIDTHS["eval_loss"]),
            _number(m.get("eval_acc"), ".1%", WIDTHS["eval_acc"]),
            _number(m.get("tokens_per_s"), ",.0f", WIDTHS["tok_s"]),
            Text(fmt_duration(run_duration(s, now)), justify="right"),
            Text(fit(device_words(m), WIDTHS["device"])),
            Text((m.get("started") or "-")[5:16] if m.get("started") else "-"),
            Text(" ".join(_tags(s)), style="italic"),
        ]


def device_words(summary: dict[str, Any]) -> list[str]:
    """The device cell, longest wording first: `cuda:0 x8` for a run of 8 processes (torchrun)."""
    device, processes = summary.get("device") or "-", summary.get("world_size") or 1
    if processes <= 1:
        return [device]
    return [f"{device} x{processes}", f"{device.split(':')[0]} x{processes}", f"x{processes}"]


def _number(value: Any, spec: str, width: int) -> Text:
    """A figure right-aligned in `width` cells: as `spec` writes it when that fits, else shorter but whole."""
    if value is None or isinstance(value, str):
        return Text(fmt_num(value, spec), justify="right")
    short = count_text(round(value)) if abs(value) >= 1000 else fmt_num(value, ".3g")
    return Text(fit([fmt_num(value, spec), short], width), justify="right")


def _tags(state: dict[str, Any]) -> list[str]:
    tags = state.get("tags") or []
    return json.loads(tags) if isinstance(tags, str) else tags
