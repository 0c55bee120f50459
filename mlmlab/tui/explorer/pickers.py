"""The explorer's three pickers: which run, which of its checkpoints, and what to compare it with.

They read runs and checkpoints in a thread worker (at mount, when the run changes, and every few
seconds because runs and checkpoints appear while the screen is open) and post `TargetChosen`
to the screen whenever what it should predict with has changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Select
from textual.worker import get_current_worker

from mlmlab.tui.explorer.worker import Choices, Target, read_choices
from mlmlab.tui.messages import ChoicesProblem, ChoicesRead, TargetChosen

LATEST = -1  # the checkpoint picker's value for "the latest checkpoint"
NO_COMPARISON = "none"
CHOICES_EVERY_S = 5.0  # how often the pickers look for new runs and checkpoints


def run_options(runs: list[dict[str, Any]]) -> list[tuple[Text, int]]:
    return [(Text(f"{r['id']} {r['name']} ({r['status']}, step {r['step']})"), r["id"]) for r in runs]


def checkpoint_options(run_id: int, checkpoints: list[dict[str, Any]], runs: list[dict[str, Any]]) -> tuple[list, list]:
    """(the checkpoint picker's options, the comparison picker's) for run `run_id`, newest first."""
    steps = [(Text("latest checkpoint"), LATEST)]
    for r in reversed(checkpoints):
        figures = f" · eval loss {r['eval_loss']:.3f}" if r.get("eval_loss") is not None else ""
        steps.append((Text(f"step {r['step']}{figures}"), r["step"]))
    compare = [(Text("no comparison"), NO_COMPARISON)]
    compare += [(Text(f"vs step {r['step']} of this run"), f"step:{r['step']}") for r in reversed(checkpoints)]
    compare += [(Text(f"vs run {r['id']} {r['name']} (latest)"), f"run:{r['id']}") for r in runs if r["id"] != run_id]
    return steps, compare


class CheckpointPickers(Horizontal):
    """Run, checkpoint and comparison pickers, kept current from the run database."""

    def __init__(self, db_path: Path, initial_run: int | None, *, id: str | None = None):
        super().__init__(id=id)
        self.db_path, self.initial_run = db_path, initial_run
        self._choices_run: int | None = None  # the run whose checkpoints the pickers list
        self._option_values: dict[str | None, list] = {}  # each picker's option values, to spot changes

    def compose(self) -> ComposeResult:
        yield Select([], id="run", prompt="run", allow_blank=True, compact=True)
        yield Select([(Text("latest checkpoint"), LATEST)], id="checkpoint", allow_blank=False, compact=True)
        yield Select([(Text("no comparison"), NO_COMPARISON)], id="compare", allow_blank=False, compact=True)

    def on_mount(self) -> None:
        self._read_choices(self.initial_run)
        self.set_interval(CHOICES_EVERY_S, self.refresh_choices)

    @property
    def comparing(self) -> bool:
        return self.query_one("#compare", Select).value != NO_COMPARISON

    def targets(self) -> tuple[Target, Target | None] | None:
        """The checkpoint to predict with, and the one to compare with; None while no run is picked."""
        run_id = self._picked_run()
        if run_id is None:
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

    def _picked_run(self) -> int | None:
        value = self.query_one("#run", Select).value
        return value if isinstance(value, int) else None

    # Reading ---------------------------------------------------------------------------------

    def refresh_choices(self) -> None:
        """Read the runs and checkpoints again (the timer calls this)."""
        picked = self._picked_run()
        self._read_choices(self.initial_run if picked is None else picked)

    @work(thread=True, exclusive=True, group="choices", exit_on_error=False, description="reading runs and checkpoints")
    def _read_choices(self, wanted: int | None) -> None:
        choices = read_choices(self.db_path, wanted)
        if not get_current_worker().is_cancelled:
            self.post_message(ChoicesRead(choices))

    @on(ChoicesRead)
    def _choices_read(self, event: ChoicesRead) -> None:
        choices: Choices = event.choices
        if choices.error is not None:
            self.post_message(ChoicesProblem(f"{choices.error} — start a run with `mlmlab run`"))
        elif not choices.runs:
            self.post_message(ChoicesProblem(f"no runs yet in {self.db_path}: start one with `mlmlab run`"))
        else:
            self._show_runs(choices)
            if choices.run_id == self._picked_run():  # else another run was picked while this was read
                self._show_checkpoints(choices)

    # Showing ---------------------------------------------------------------------------------

    def _show_runs(self, choices: Choices) -> None:
        """Refill the run picker when runs came or went, keeping the run it shows."""
        ids = [r["id"] for r in choices.runs]
        if ids == self._option_values.get("run"):
            return
        picker = self.query_one("#run", Select)
        picked = self._picked_run()
        self._option_values[picker.id] = ids
        picker.set_options(run_options(choices.runs))
        picker.value = picked if picked in ids else choices.run_id

    def _show_checkpoints(self, choices: Choices) -> None:
        steps, compare = checkpoint_options(choices.run_id, choices.checkpoints, choices.runs)
        checkpoints = self.query_one("#checkpoint", Select)
        pickers = ((checkpoints, steps), (self.query_one("#compare", Select), compare))
        if choices.run_id != self._choices_run:  # another run: its own checkpoints, from the latest
            self._choices_run = choices.run_id
            for select, options in pickers:
                self._option_values[select.id] = [value for _, value in options]
                select.set_options(options)
            self.post_message(TargetChosen())
            return
        new_checkpoint = [v for _, v in steps] != self._option_values.get(checkpoints.id)
        for select, options in pickers:
            if [v for _, v in options] != self._option_values.get(select.id):
                self._set_options(select, options)
        if new_checkpoint and checkpoints.value == LATEST:
            self.post_message(TargetChosen(force=True))  # "latest" now means a newer checkpoint

    def _set_options(self, select: Select, options: list) -> None:
        """Replace a Select's options, keeping its value where it still exists."""
        keep = select.value
        self._option_values[select.id] = [value for _, value in options]
        select.set_options(options)
        if keep in [value for _, value in options]:
            select.value = keep

    @on(Select.Changed, "#run")
    def _run_changed(self) -> None:
        run_id = self._picked_run()
        if run_id is None:
            return
        if run_id == self._choices_run:
            self.post_message(TargetChosen())
        else:
            self._read_choices(run_id)  # its checkpoints fill the other pickers, then TargetChosen

    @on(Select.Changed, "#checkpoint")
    @on(Select.Changed, "#compare")
    def _target_changed(self) -> None:
        self.post_message(TargetChosen())
