"""Base screens: one that re-reads the database in a thread on every tick, and one that also plots.

A `LiveScreen` asks `request()` for what to read (plain data, built on the UI thread), `fetch()`es
it in a thread worker with its own read-only connection, and `show()`s the result on the UI thread.
At most one read is in flight per screen, so a slow or locked database never piles up threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from rich.text import Text
from textual import on, work
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Static, TabbedContent

from mlmlab.tui.formatting import SMOOTHING, X_AXES, X_LABELS
from mlmlab.tui.messages import Polled
from mlmlab.tui.reader import SeriesBook


# Keys the screens share, placed by each screen in its own BINDINGS so the footer reads in a sensible order.
BACK = Binding("escape,backspace", "back", "Back")
HELP = Binding("question_mark", "help", "Help")
QUIT = Binding("q", "app.quit", "Quit", show=False)
PLOT_KEYS = [Binding("x", "x_axis", "X axis"), Binding("z", "smoothing", "Smooth")]
# Keys that act on the selected run (see LiveScreen.selected_run), the same on every screen that has one.
STOP = Binding("s", "on_run('stop_run')", "Stop")
RESUME = Binding("r", "on_run('resume_run')", "Resume")
EXPLORER = Binding("m", "explorer", "Mask explorer")

T = TypeVar("T")


def next_of(options: Sequence[T], current: T) -> T:
    """The option after `current`, back to the first after the last: what a key that cycles a setting picks."""
    return options[(options.index(current) + 1) % len(options)]


class LiveScreen(Screen):
    GUIDE = ""  # shown under the keys in this screen's help

    def __init__(self) -> None:
        super().__init__()
        self.polling = False

    def on_mount(self) -> None:
        self.poll()
        self.set_interval(self.app.poll_interval, self.poll)

    def poll(self) -> None:
        if not self.polling:
            self.polling = True
            self._read(self.request())

    @work(thread=True, group="poll", exit_on_error=False, description="reading the database")
    def _read(self, request: Any) -> None:
        self.post_message(Polled(self.fetch(request)))

    @on(Polled)
    def _polled(self, message: Polled) -> None:
        self.polling = False
        self.show(message.poll)

    def request(self) -> Any:
        """What the next read should fetch (UI thread)."""
        raise NotImplementedError

    def fetch(self, request: Any) -> Any:
        """Read it (worker thread: no widgets here). Must not raise: return errors as data."""
        raise NotImplementedError

    def show(self, poll: Any) -> None:
        """Show what was read (UI thread)."""
        raise NotImplementedError

    def action_help(self) -> None:
        from mlmlab.tui.screens.modals import HelpScreen

        self.app.push_screen(HelpScreen(self, self.GUIDE))

    def selected_run(self) -> int | None:
        """The run the keys act on here (None: there is none)."""
        return None

    def action_on_run(self, operation: str) -> None:
        """Run one of the app's run operations (stop_run, resume_run, delete_run, edit_tags) on the selected run."""
        run_id = self.selected_run()
        if run_id is None:
            self.app.say("no run selected: press n to start one", "warning")
            return
        getattr(self.app, operation)(run_id)

    def action_explorer(self) -> None:
        self.app.open_explorer(self.selected_run())


class PlotScreen(LiveScreen):
    """A live screen with curves: the x axis and smoothing are switchable, series are read incrementally."""

    def __init__(self) -> None:
        super().__init__()
        self.x_axis = "step"
        self.smoothing = 0.0
        self.book = SeriesBook()
        self.generation = 0  # bumped when the curves must be re-read from scratch: answers to older reads are dropped

    def on_mount(self) -> None:
        self.update_plot_state()
        super().on_mount()

    def plot_state(self) -> Text:
        """The line above the plots: x axis and smoothing, with their keys."""
        state = Text()
        state.append("x: ", style="dim")
        state.append(X_LABELS[self.x_axis], style="bold")
        state.append(" (x)   smoothing: ", style="dim")
        state.append(f"{self.smoothing:g}" if self.smoothing else "off", style="bold")
        state.append(" (z)", style="dim")
        return state

    def update_plot_state(self) -> None:
        self.query_one("#plot-state").update(self.plot_state())

    def update_plots(self) -> None:
        raise NotImplementedError

    def show_read_error(self, banner_id: str, error: str | None, retrying: str) -> bool:
        """Show (or hide) the banner that says the last read failed; True when it failed."""
        banner = self.query_one(banner_id, Static)
        banner.display = error is not None
        if error:
            banner.update(Text(f"{error}\n({retrying})"))
        return error is not None

    def action_back(self) -> None:
        self.dismiss()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_x_axis(self) -> None:
        self.x_axis = next_of(X_AXES, self.x_axis)
        self.generation += 1
        self.book.reset()
        self.update_plot_state()
        self.poll()

    def action_smoothing(self) -> None:
        self.smoothing = next_of(SMOOTHING, self.smoothing)
        self.update_plot_state()
        self.update_plots()
