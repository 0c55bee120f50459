"""Small dialogs: confirm, tags and note, resume length, preset name, help."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import ActiveBinding, Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, Static, TextArea


class Dialog(ModalScreen):
    """A centred box with a title, a body and OK / Cancel; `escape` cancels, `ctrl+s` accepts."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "accept", "OK"),
    ]
    ok_label = "OK"

    def __init__(self, title: str) -> None:
        super().__init__(classes="dialog")
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-box"):
            yield Label(Text(self.title_text, style="bold"), classes="dialog-title")
            yield from self.body()
            yield Static("", id="dialog-error", classes="form-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.ok_label, variant="primary", id="ok")
                yield Button("Cancel", id="cancel")

    def body(self) -> ComposeResult:
        yield from ()

    def result(self) -> Any:
        return True

    def error(self, message: str) -> None:
        self.query_one("#dialog-error", Static).update(Text(message))

    @on(Button.Pressed, "#ok")
    def action_accept(self) -> None:
        result = self.result()
        if result is not None:
            self.dismiss(result)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_accept()


class ConfirmDialog(Dialog):
    """Yes or no; `y` and `n` answer directly."""

    BINDINGS = [Binding("y", "accept", "Yes"), Binding("n", "cancel", "No")]
    ok_label = "Yes"

    def __init__(self, title: str, message: str) -> None:
        super().__init__(title)
        self.message = message

    def body(self) -> ComposeResult:
        yield Static(Text(self.message), classes="dialog-text")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()


class TagsNoteDialog(Dialog):
    """Edit a run's tags (comma or space separated) and its free-text note."""

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__(f"Tags and note of run {run['id']} '{run['name']}'")
        self.run = run

    def body(self) -> ComposeResult:
        yield Label("Tags (comma or space separated)")
        yield Input(", ".join(self.run.get("tags") or []), id="tags")
        yield Label("Note (ctrl+s saves)")
        yield TextArea(self.run.get("note") or "", id="note", soft_wrap=True)

    def on_mount(self) -> None:
        self.query_one("#tags", Input).focus()

    def result(self) -> tuple[list[str], str]:
        tags = [t for t in re.split(r"[,\s]+", self.query_one("#tags", Input).value) if t]
        return tags, self.query_one("#note", TextArea).text.strip()


class ResumeDialog(Dialog):
    """How long the resumed run should go: train.steps (and train.max_minutes when it is time-bound)."""

    ok_label = "Resume"

    def __init__(self, run: dict[str, Any]) -> None:
        super().__init__(f"Resume run {run['id']} '{run['name']}' from step {run['checkpoint_step']}")
        self.run = run

    def body(self) -> ComposeResult:
        run = self.run
        train = run["config"]["train"]
        steps = train["steps"] if run["checkpoint_step"] < train["steps"] else train["steps"] * 2
        minutes = train.get("max_minutes") or 0
        if minutes and run.get("elapsed", 0) >= minutes * 60 - 1:
            minutes = round(run["elapsed"] / 60 + minutes, 1)  # it used its time: give it as much again
        yield Static(Text(f"It stopped at step {run['step']} ({run['status']}); the last checkpoint is at step "
                          f"{run['checkpoint_step']}. Only the length can change."), classes="dialog-text")
        with Horizontal(classes="dialog-row"):
            yield Label("train.steps")
            yield Input(str(steps), id="steps")
        with Horizontal(classes="dialog-row"):
            yield Label("train.max_minutes")
            yield Input(f"{minutes:g}", id="minutes")

    def on_mount(self) -> None:
        self.query_one("#steps", Input).focus()

    def result(self) -> list[str] | None:
        steps = self.query_one("#steps", Input).value.strip()
        minutes = self.query_one("#minutes", Input).value.strip()
        if not steps.isdigit() or int(steps) <= self.run["checkpoint_step"]:
            self.error(f"train.steps = {steps!r}: must be a whole number above the checkpoint's step {self.run['checkpoint_step']}")
            return None
        try:
            if float(minutes) < 0:
                raise ValueError
        except ValueError:
            self.error(f"train.max_minutes = {minutes!r}: must be a number >= 0 (0 = no limit)")
            return None
        return [f"train.steps={steps}", f"train.max_minutes={minutes}"]


class PresetNameDialog(Dialog):
    """The name of a new preset file in experiments/."""

    ok_label = "Save"

    def __init__(self, folder, existing: set[str]) -> None:
        super().__init__(f"Save as a new preset in {folder}/")
        self.existing = existing

    def body(self) -> ComposeResult:
        yield Label("Preset name (letters, digits, - and _)")
        yield Input(id="preset-name", placeholder="my-experiment")

    def on_mount(self) -> None:
        self.query_one("#preset-name", Input).focus()

    def result(self) -> str | None:
        name = self.query_one("#preset-name", Input).value.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
            self.error(f"preset name {name!r}: use letters, digits, - and _ (no spaces or dots)")
            return None
        if name in self.existing:
            self.error(f"a preset named {name!r} exists already: choose another name")
            return None
        return name


def screen_keys(screen: Screen) -> list[ActiveBinding]:
    """A screen's own enabled keys, once per action: not Textual's focus and copy keys, not widgets' keys."""
    generic = {binding.action for binding in Screen.BINDINGS if isinstance(binding, Binding)}
    found, seen = [], set()
    for active in screen.active_bindings.values():
        binding = active.binding
        if (active.node is not screen or not binding.description or binding.action in seen
                or binding.action in generic or not active.enabled):
            continue
        seen.add(binding.action)
        found.append(active)
    return found


class HelpScreen(ModalScreen):
    """The keys of the screen underneath, and where things are."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, under: Screen, guide: str) -> None:
        super().__init__(classes="dialog")
        self.under = under
        self.guide = guide

    def compose(self) -> ComposeResult:
        keys = Text()
        for active in screen_keys(self.under):
            binding = active.binding
            keys.append(f"{binding.key_display or self.app.get_key_display(binding):>10}  ", style="bold")
            keys.append(binding.description + "\n")
        with VerticalScroll(classes="dialog-box help-box"):
            yield Label(Text("Keys here", style="bold"), classes="dialog-title")
            yield Static(keys)
            yield Static(Text(self.guide), classes="dialog-text")
            yield Static(Text("ctrl+p opens the command palette: every action, searchable. escape closes this.",
                              style="dim"))
