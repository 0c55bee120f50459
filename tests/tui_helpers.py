"""Helpers for the app's pilot tests: build the app, wait for a condition or for its workers, read what
a screen shows and what the app notified."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from textual.app import App
from textual.message import Message
from textual.notifications import Notification, Notify
from textual.pilot import Pilot
from textual.widgets import DataTable
from textual.worker import WorkerCancelled

from mlmlab.tui.app import MlmlabApp, make_app

POLL = 0.15  # the app's poll interval in tests


TEST_DEVICES = [{"id": "cpu", "label": "cpu (test)"}]


def build_app(db_path: Path, presets_dir: Path | None = None, probe_devices: bool = False) -> MlmlabApp:
    """The app as the CLI builds it, polling faster; the device probe (a torch import) only when asked."""
    app = make_app(db_path, poll_interval=POLL, presets_dir=presets_dir)
    if not probe_devices:
        app.set_reactive(MlmlabApp.devices, TEST_DEVICES)
    return app


async def wait_for(pilot: Pilot, condition: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until `condition()` is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or condition}")
        await pilot.pause(0.1)


async def wait_for_workers(app: App) -> None:
    """Wait until every worker the app has started so far has ended; a cancelled one counts as ended.

    Each is awaited on its own, so one cancelled worker does not cut the wait for the others short.
    """
    for worker in list(app.workers):
        with suppress(WorkerCancelled):
            await worker.wait()


async def settle(pilot: Pilot) -> None:
    """Let the keys pressed so far start their work, wait for every worker, then let the screen show the result.

    Use before asserting that something did *not* happen: a fixed pause only guesses how long is enough.
    Not while a worker waits on a dialog or watches a launched run: it would wait for that too.
    """
    await pilot.pause()
    await wait_for_workers(pilot.app)
    await pilot.pause()


class Notifications(list[Notification]):
    """What the app notified, in order: pass an instance as `run_test(message_hook=...)`."""

    def __call__(self, message: Message) -> None:
        if isinstance(message, Notify):
            self.append(message.notification)

    @property
    def messages(self) -> list[str]:
        return [notification.message for notification in self]


def table_text(table: DataTable) -> list[list[str]]:
    """Every row of a DataTable as plain strings, as shown."""
    return [[str(getattr(cell, "plain", cell)) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def run_status(app: MlmlabApp, run_id: int) -> str | None:
    """The status the runs screen shows for a run (from its table cell), or None if it has no row."""
    from mlmlab.tui.screens.runs import RunsScreen

    screen = next(s for s in app.screen_stack if isinstance(s, RunsScreen))
    table = screen.query_one("#runs", DataTable)
    try:
        cell = table.get_cell(str(run_id), "status")
    except Exception:  # noqa: BLE001 - no such row yet
        return None
    return cell.plain.split(" ", 1)[1]


async def wait_for_screen(pilot: Pilot, app: MlmlabApp, kind: type, timeout: float = 10.0):
    """Wait until a screen of `kind` is on top and composed (pushing is asynchronous), and return it."""
    await wait_for(pilot, lambda: isinstance(app.screen, kind) and app.screen.is_mounted
                   and bool(app.screen.query("Footer")), timeout, f"the {kind.__name__}")
    await pilot.pause()
    return app.screen
