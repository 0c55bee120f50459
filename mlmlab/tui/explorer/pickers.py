"""The explorer's three pickers: which run, which of its checkpoints, and what to compare it with;
and a box to open a local Hugging Face model directory, which then sits among the runs.

They read runs and checkpoints in a thread worker (at mount, when the run changes, and every few
seconds because runs and checkpoints appear while the screen is open) and post `TargetChosen`
to the screen whenever what it should predict with has changed. A typed path is checked in a
worker too (`worker.check_model_dir_choice`); loading the model is the prediction worker's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import Input, Select
from textual.worker import get_current_worker

from mlmlab.predict.results import ModelDirRef
from mlmlab.tui.explorer.worker import Choices, ModelDirChoice, ModelDirTarget, Target, check_model_dir_choice, read_choices
from mlmlab.tui.messages import ChoicesProblem, ChoicesRead, TargetChosen

LATEST = -1  # the checkpoint picker's value for "the latest checkpoint"
NO_COMPARISON = "none"
DIR = "dir:"  # the run picker's values for model directories: "dir:" + the resolved path
CHOICES_EVERY_S = 5.0  # how often the pickers look for new runs and checkpoints


def run_options(runs: list[dict[str, Any]], dirs: list[ModelDirRef] = ()) -> list[tuple[Text, int | str]]:
    options: list[tuple[Text, int | str]] = [(Text(f"{r['id']} {r['name']} ({r['status']}, step {r['step']})"), r["id"]) for r in runs]
    return options + [(Text(f"{d.label} · {d.path}"), DIR + str(d.path)) for d in dirs]


def checkpoint_options(run_id: int | str, checkpoints: list[dict[str, Any]], runs: list[dict[str, Any]],
                       dirs: list[ModelDirRef] = ()) -> tuple[list, list]:
    """(the checkpoint picker's options, the comparison picker's) for run `run_id`, newest first;
    for a model directory (`run_id` is its DIR value) one set of weights, compared with runs or other directories."""
    if isinstance(run_id, str):
        steps, checkpoints = [(Text("its weights (a model directory has no checkpoints)"), LATEST)], []
    else:
        steps = [(Text("latest checkpoint"), LATEST)]
    for r in reversed(checkpoints):
        figures = f" · eval loss {r['eval_loss']:.3f}" if r.get("eval_loss") is not None else ""
        steps.append((Text(f"step {r['step']}{figures}"), r["step"]))
    compare = [(Text("no comparison"), NO_COMPARISON)]
    compare += [(Text(f"vs step {r['step']} of this run"), f"step:{r['step']}") for r in reversed(checkpoints)]
    compare += [(Text(f"vs run {r['id']} {r['name']} (latest)"), f"run:{r['id']}") for r in runs if r["id"] != run_id]
    compare += [(Text(f"vs {d.label}"), DIR + str(d.path)) for d in dirs if DIR + str(d.path) != run_id]
    return steps, compare


class CheckpointPickers(Horizontal):
    """Run, checkpoint and comparison pickers, kept current from the run database, and the box that
    opens a model directory."""

    class ModelDirChecked(Message):
        """A typed path, checked by the pickers' worker (`choice.ref` or `choice.error`)."""

        def __init__(self, choice: ModelDirChoice) -> None:
            super().__init__()
            self.choice = choice

    def __init__(self, db_path: Path, initial_run: int | None, *, id: str | None = None):
        super().__init__(id=id)
        self.db_path, self.initial_run = db_path, initial_run
        self._choices_run: int | str | None = None  # the run (or DIR value) whose checkpoints the pickers list
        self._option_values: dict[str | None, list] = {}  # each picker's option values, to spot changes
        self._choices = Choices()  # the latest read
        self.dirs: list[ModelDirRef] = []  # model directories opened while the screen is open

    def compose(self) -> ComposeResult:
        yield Select([], id="run", prompt="run or model", allow_blank=True, compact=True)
        yield Select([(Text("latest checkpoint"), LATEST)], id="checkpoint", allow_blank=False, compact=True)
        yield Select([(Text("no comparison"), NO_COMPARISON)], id="compare", allow_blank=False, compact=True)
        yield Input(id="model-path", placeholder="open a local HF model folder: path, Enter", compact=True)

    def on_mount(self) -> None:
        self._read_choices(self.initial_run)
        self.set_interval(CHOICES_EVERY_S, self.refresh_choices)

    @property
    def comparing(self) -> bool:
        return self.query_one("#compare", Select).value != NO_COMPARISON

    def targets(self) -> tuple[Target | ModelDirTarget, Target | ModelDirTarget | None] | None:
        """The checkpoint (or model directory) to predict with, and the one to compare with; None while
        nothing is picked."""
        run_id = self._picked_run()
        if run_id is None:
            return None
        step = self.query_one("#checkpoint", Select).value
        primary = self._dir_target(run_id) or Target(run_id, None if step == LATEST or not isinstance(step, int) else step)
        compare = self.query_one("#compare", Select).value
        secondary = None
        if isinstance(compare, str) and compare.startswith("step:") and isinstance(run_id, int):
            secondary = Target(run_id, int(compare.removeprefix("step:")))
        elif isinstance(compare, str) and compare.startswith("run:"):
            secondary = Target(int(compare.removeprefix("run:")), None)
        elif isinstance(compare, str) and compare.startswith(DIR):
            secondary = self._dir_target(compare)
        return primary, secondary

    def _dir_target(self, value: int | str) -> ModelDirTarget | None:
        return next((ModelDirTarget(d) for d in self.dirs if DIR + str(d.path) == value), None)

    def _picked_run(self) -> int | str | None:
        """The run picker's value: a run id, a model directory's DIR value, or None."""
        value = self.query_one("#run", Select).value
        return value if isinstance(value, int) or (isinstance(value, str) and value.startswith(DIR)) else None

    # Reading ---------------------------------------------------------------------------------

    def refresh_choices(self) -> None:
        """Read the runs and checkpoints again (the timer calls this)."""
        picked = self._picked_run()
        self._read_choices(self.initial_run if picked is None or isinstance(picked, str) else picked)

    @work(thread=True, exclusive=True, group="choices", exit_on_error=False, description="reading runs and checkpoints")
    def _read_choices(self, wanted: int | None) -> None:
        choices = read_choices(self.db_path, wanted)
        if not get_current_worker().is_cancelled:
            self.post_message(ChoicesRead(choices))

    @on(ChoicesRead)
    def _choices_read(self, event: ChoicesRead) -> None:
        choices: Choices = event.choices
        if choices.error is not None and not self.dirs:
            self.post_message(ChoicesProblem(f"{choices.error} — start a run with `mlmlab run`, or open a model folder"))
        elif not choices.runs and not self.dirs:
            self.post_message(ChoicesProblem(f"no runs yet in {self.db_path}: start one with `mlmlab run`, "
                                             "or type a local model folder's path in the box above"))
        else:
            self._choices = choices if choices.error is None else Choices()
            self._show_runs(self._choices)
            picked = self._picked_run()
            if isinstance(picked, str) or self._choices.run_id == picked:  # else another run was picked meanwhile
                self._show_checkpoints(self._choices, picked)

    # Model directories -----------------------------------------------------------------------

    @on(Input.Submitted, "#model-path")
    def _path_typed(self, event: Input.Submitted) -> None:
        event.stop()
        self._check_model_dir(event.value)

    @work(thread=True, exclusive=True, group="model-dir", exit_on_error=False, description="checking the model folder")
    def _check_model_dir(self, typed: str) -> None:
        choice = check_model_dir_choice(typed)
        if not get_current_worker().is_cancelled:
            self.post_message(self.ModelDirChecked(choice))

    @on(ModelDirChecked)
    def _model_dir_checked(self, event: ModelDirChecked) -> None:
        choice: ModelDirChoice = event.choice
        if choice.ref is None:
            self.post_message(ChoicesProblem(choice.error or "not a model directory"))
            return
        if choice.ref not in self.dirs:
            self.dirs.append(choice.ref)
        self.query_one("#model-path", Input).value = ""
        self._show_runs(self._choices)
        self.query_one("#run", Select).value = DIR + str(choice.ref.path)  # Select.Changed shows its pickers

    # Showing ---------------------------------------------------------------------------------

    def _show_runs(self, choices: Choices) -> None:
        """Refill the run picker when runs (or opened directories) came or went, keeping what it shows."""
        options = run_options(choices.runs, self.dirs)
        values = [value for _, value in options]
        if values == self._option_values.get("run"):
            return
        picker = self.query_one("#run", Select)
        picked = self._picked_run()
        self._option_values[picker.id] = values
        picker.set_options(options)
        if picked in values:
            picker.value = picked
        elif choices.run_id is not None:
            picker.value = choices.run_id

    def _show_checkpoints(self, choices: Choices, picked: int | str | None = None) -> None:
        shown_for = picked if isinstance(picked, str) else choices.run_id
        checkpoints_of = choices.checkpoints if shown_for == choices.run_id else []
        steps, compare = checkpoint_options(shown_for, checkpoints_of, choices.runs, self.dirs)
        checkpoints = self.query_one("#checkpoint", Select)
        pickers = ((checkpoints, steps), (self.query_one("#compare", Select), compare))
        if shown_for != self._choices_run:  # another run: its own checkpoints, from the latest
            self._choices_run = shown_for
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
        elif isinstance(run_id, str):  # a model directory: nothing to read, its pickers at once
            self._show_checkpoints(self._choices, run_id)
        else:
            self._read_choices(run_id)  # its checkpoints fill the other pickers, then TargetChosen

    @on(Select.Changed, "#checkpoint")
    @on(Select.Changed, "#compare")
    def _target_changed(self) -> None:
        self.post_message(TargetChosen())
