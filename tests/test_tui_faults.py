"""The app under faults (issue 6): the database deleted or replaced while open, a run process that
vanishes, a tiny terminal. Each time the app says what happened and keeps working."""

from __future__ import annotations

import shutil
import subprocess
import sys

from textual.widgets import DataTable, Static
from tui_helpers import build_app, run_status, settle, wait_for, wait_for_screen

from mlmlab.store import Store
from mlmlab.tui.screens.detail import RunDetailScreen
from mlmlab.tui.screens.runs import RunsScreen


def rows(app) -> int:
    screen = next(s for s in app.screen_stack if isinstance(s, RunsScreen))
    return screen.query_one("#runs", DataTable).row_count


def banner(app) -> Static:
    screen = next(s for s in app.screen_stack if isinstance(s, RunsScreen))
    return screen.query_one("#db-error", Static)


async def test_database_deleted_then_replaced_while_open(trained_run, tmp_path):
    src, _ = trained_run
    db = tmp_path / "live.db"
    shutil.copy(src, db)
    app = build_app(db)
    async with app.run_test(size=(110, 30)) as pilot:
        await wait_for(pilot, lambda: rows(app) == 1, 10, "the run")
        db.unlink()
        await wait_for(pilot, lambda: rows(app) == 0, 10, "the table to empty")
        assert "does not exist" in str(app.screen.query_one("#welcome-text", Static).content)
        # Something that is not a database takes its place: a banner, not a traceback.
        db.write_bytes(b"garbage" * 500)
        await wait_for(pilot, lambda: banner(app).display, 10, "the corrupt banner")
        assert "not an SQLite database" in str(banner(app).content)
        # A real database comes back: the app recovers by itself.
        db.unlink()
        shutil.copy(src, db)
        await wait_for(pilot, lambda: rows(app) == 1 and not banner(app).display, 10, "recovery")
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: not isinstance(app.screen, RunsScreen), 5, "help still opens")


async def test_run_process_that_vanishes_reads_crashed(tmp_path):
    db = tmp_path / "runs.db"
    gone = subprocess.Popen([sys.executable, "-c", "pass", "mlmlab"])
    gone.wait()
    with Store(db) as store:
        run_id = store.create_run(name="ghost", config={"train": {}}, vocab={"kind": "char", "chars": "ab"}, total_steps=10)
        store.update_run(run_id, status="running", pid=gone.pid, step=3)
    app = build_app(db)
    async with app.run_test(size=(110, 30)) as pilot:
        await wait_for(pilot, lambda: run_status(app, run_id) is not None, 10, "the row")
        assert run_status(app, run_id) == "crashed"


async def test_tiny_terminal_keeps_working(trained_run, tmp_path):
    src, run_id = trained_run
    shutil.copytree(src.parent, tmp_path / "copy")
    db = tmp_path / "copy" / src.name
    app = build_app(db)
    async with app.run_test(size=(110, 30)) as pilot:
        await wait_for(pilot, lambda: rows(app) == 1, 10, "the run")
        await pilot.resize_terminal(40, 12)
        await pilot.pause()
        app.open_detail(run_id)
        await wait_for_screen(pilot, app, RunDetailScreen)
        for key in ("2", "3", "4", "1", "x", "z"):
            await pilot.press(key)
        await settle(pilot)
        await pilot.press("escape", "n")
        await settle(pilot)
        await pilot.press("escape")
        await pilot.resize_terminal(120, 35)
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen) and rows(app) == 1
