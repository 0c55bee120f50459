"""How far a run is through its budgets, and which budget ended it.

A run has a step budget (`train.steps`) and may have a time budget (`train.max_minutes`); it ends
at whichever runs out first, so its progress is the nearer of the two. A completed run ended by
one of them: its step count reached the budget, or else (the only other way to complete) the
time did. Plain Python: the store, the CLI and the app all read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlmlab.vocab import COMPLETED

STEPS, TIME = "steps", "time"


@dataclass(frozen=True)
class Budget:
    """Where a run stands against the budget that binds it."""

    fraction: float  # 0..1 of the binding budget
    binding: str  # STEPS or TIME: the budget nearer to its end (for a completed run, the one that ended it)
    complete: bool  # the run completed
    max_minutes: float  # 0: no time budget

    @property
    def reason(self) -> str:
        """Why a completed run ended, in the words a user reads: `steps` or `5m budget`."""
        return STEPS if self.binding == STEPS else f"{minutes_text(self.max_minutes)} budget"


def run_budget(status: str, step: int, total_steps: int, elapsed: float, max_minutes: float | None) -> Budget:
    """The binding budget of a run from its row's figures (elapsed in training seconds)."""
    max_minutes = max_minutes or 0.0
    by_steps = min(1.0, step / total_steps) if total_steps else 0.0
    by_time = min(1.0, elapsed / (60 * max_minutes)) if max_minutes else 0.0
    if status == COMPLETED:
        ended_by_time = bool(max_minutes) and step < total_steps
        return Budget(1.0, TIME if ended_by_time else STEPS, True, max_minutes)
    if by_time > by_steps:
        return Budget(by_time, TIME, False, max_minutes)
    return Budget(by_steps, STEPS, False, max_minutes)


def ended_by(status: str, step: int, total_steps: int, max_minutes: float | None) -> str | None:
    """STEPS or TIME for a completed run; None for any other."""
    return run_budget(status, step, total_steps, 0.0, max_minutes).binding if status == COMPLETED else None


def minutes_text(minutes: float) -> str:
    """A time budget as it is written in a table: 5m, 90s, 1h30m, 2.5m."""
    seconds = minutes * 60
    if seconds < 60:
        return f"{seconds:g}s"
    if minutes >= 60 and minutes == int(minutes):
        hours, rest = divmod(int(minutes), 60)
        return f"{hours}h{rest:02d}m" if rest else f"{hours}h"
    return f"{minutes:g}m"
