"""What the runs table shows: its columns (fewer on a narrow terminal), its status filters and sorts,
and one run's row, with the filter words it matches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from mlmlab.tui.formatting import fmt_duration, fmt_num, progress_text, run_duration, status_text
from mlmlab.vocab import ACTIVE, COMPLETED, CRASHED, FAILED, STOPPED

# (key, header, width): fixed widths so live values never get cut; None grows with the content.
COLUMNS = [
    ("mark", " ", 1), ("id", "id", 3), ("name", "name", None), ("status", "status", 11), ("progress", "progress", 19),
    ("train_loss", "train loss", 10), ("eval_loss", "eval loss", 9), ("eval_acc", "eval acc", 8),
    ("tok_s", "tok/s", 8), ("duration", "duration", 8), ("device", "device", 6), ("started", "started", 11),
    ("tags", "tags", None),
]
# On a narrow terminal these columns go first, in this order, so the rest fit without scrolling
# sideways (the run detail still shows all of it).
DROP_WHEN_NARROW = ["started", "device", "duration", "tags", "train_loss", "tok_s", "eval_loss"]
GROWING_WIDTH_GUESS = {"name": 10, "tags": 6}


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
            return s["step"] / s["total_steps"] if s["total_steps"] else 0
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
            progress_text(s["step"], s["total_steps"], width=8),
            Text(fmt_num(m.get("train_loss"), ".3f"), justify="right"),
            Text(fmt_num(m.get("eval_loss"), ".3f"), justify="right"),
            Text(fmt_num(m.get("eval_acc"), ".1%"), justify="right"),
            Text(fmt_num(m.get("tokens_per_s"), ",.0f"), justify="right"),
            Text(fmt_duration(run_duration(s, now)), justify="right"),
            Text(m.get("device") or "-"),
            Text((m.get("started") or "-")[5:16] if m.get("started") else "-"),
            Text(" ".join(_tags(s)), style="italic"),
        ]


def _tags(state: dict[str, Any]) -> list[str]:
    tags = state.get("tags") or []
    return json.loads(tags) if isinstance(tags, str) else tags
