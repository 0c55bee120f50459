"""Pilot tests of the app on prepared databases: welcome, table, detail, compare, form, edges."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys

import pytest
from textual.widgets import DataTable, Input, Select, Static, TextArea
from tui_helpers import Notifications, build_app, settle, table_text, wait_for, wait_for_screen

from mlmlab.store import Store
from mlmlab.tui.screens.compare import CompareScreen
from mlmlab.tui.screens.detail import RunDetailScreen
from mlmlab.tui.screens.form import NewRunScreen
from mlmlab.tui.plots import MetricPlot
from mlmlab.tui.screens.runs import RunsScreen


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, trained_run):
    """The session's trained run (#1 'shared', 60 steps, lr 3e-3) and a second run made from it: (db, [ids]).

    Run #2 'beta' is its first 40 steps recorded again with lr 1e-3 and a third lower loss, so two
    runs exist without paying for a second training process on a busy 2-core machine.
    """
    src_db, _ = trained_run
    folder = tmp_path_factory.mktemp("two")
    shutil.copytree(src_db.parent, folder, dirs_exist_ok=True)
    db = folder / src_db.name
    with Store(db) as store:
        store.update_run(1, run_dir=str(store.run_dir_for(1)))
        first = store.run(1)
        config = {**first["config"], "train": {**first["config"]["train"], "lr": 1e-3, "steps": 40}}
        second = store.create_run(name="beta", config=config, vocab=first["vocab"], total_steps=40)
        rows = [{k: v for k, v in row.items() if k != "id"} | {"run_id": second}
                for row in store.metrics(1) if row["step"] <= 40]
        for row in rows:
            if row["name"].endswith("loss") and row["value"] is not None:
                row["value"] *= 2 / 3
        store.add_metrics(rows)
        store.add_samples([{k: v for k, v in sample.items() if k != "id"} | {"run_id": second}
                           for sample in store.samples(1, step=40)])
        store.update_run(second, status="completed", step=40, tokens=40 * 16 * 32, elapsed=5.0, device="cpu",
                         started_at=first["started_at"], ended_at=first["ended_at"])
        store.run_dir_for(second).mkdir(parents=True)
        (store.run_dir_for(second) / "run.log").write_text("step 40/40 loss 2.0\n")
    return db, [1, second]


@pytest.fixture
def two_runs_copy(two_runs, tmp_path):
    """A private copy (database and run folders) for tests that change it."""
    src_db, ids = two_runs
    dst = tmp_path / "copy"
    shutil.copytree(src_db.parent, dst)
    db = dst / src_db.name
    with Store(db) as store:  # run folders are recorded with absolute paths: point them at the copy
        for run_id in ids:
            store.update_run(run_id, run_dir=str(store.run_dir_for(run_id)))
    return db, ids


def runs_screen(app) -> RunsScreen:
    assert isinstance(app.screen, RunsScreen), app.screen
    return app.screen


async def test_empty_database_shows_the_welcome(db_path):
    app = build_app(db_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = runs_screen(app)
        await wait_for(pilot, lambda: screen.loaded, 10, "the first poll")
        welcome = screen.query_one("#welcome")
        assert welcome.display and not screen.query_one("#runs").display
        text = screen.query_one("#welcome-text", Static).content
        assert "does not exist yet" in str(text) and "mlmlab run" in str(text)
    assert not db_path.exists()  # looking never creates the database


async def test_prepared_database_fills_the_table(two_runs):
    db, ids = two_runs
    app = build_app(db)
    async with app.run_test(size=(140, 30)) as pilot:
        screen = runs_screen(app)
        table = screen.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "two rows")
        rows = {row[1].strip(): row for row in table_text(table)}
        assert rows["1"][2] == "shared" and rows["2"][2] == "beta"
        assert "completed" in rows["1"][3] and "60/60" in rows["1"][4] and "40/40" in rows["2"][4]
        assert float(rows["1"][6]) > 0 and rows["1"][7].endswith("%")  # eval loss and accuracy
        assert not screen.query_one("#welcome").display

        await pilot.press("slash", *"beta", "enter")
        await wait_for(pilot, lambda: table.row_count == 1, 5, "the filter")
        assert table_text(table)[0][2] == "beta"  # not 'shared
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 2, 5, "the filter cleared")
        await pilot.press("f", "f")  # all -> active -> completed
        assert screen.status_filter == "completed" and table.row_count == 2
        await pilot.press("f")  # stopped: none
        await wait_for(pilot, lambda: table.row_count == 0, 5, "the status filter")


async def test_detail_shows_plots_samples_log_and_config(two_runs):
    db, ids = two_runs
    app = build_app(db)
    async with app.run_test(size=(120, 40)) as pilot:
        table = runs_screen(app).query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "rows")
        await pilot.press("down", "enter")  # newest first: run 2, then run 1
        screen = await wait_for_screen(pilot, app, RunDetailScreen)
        assert screen.run_id == 1
        loss = screen.query_one("#plot-loss", MetricPlot)
        await wait_for(pilot, lambda: loss.n_points > 0, 10, "loss points")
        assert {line.label for line in loss.lines if line.points} == {"train", "eval"}
        assert screen.query_one("#plot-acc", MetricPlot).n_points >= 3  # evals at 20, 40, 60
        assert screen.query_one("#plot-speed", MetricPlot).n_points > 0
        head = str(screen.query_one("#detail-head", Static).content)
        assert "shared" in head and "completed" in head and "60/60" in head and "eval acc" in head
        samples = str(screen.query_one("#samples-text", Static).content)
        assert "step 60:" in samples and " in " in samples and " out " in samples
        note = str(screen.query_one("#log-note", Static).content)
        assert "started from a shell" in note  # launched by run_cli, not by the app
        config = table_text(screen.query_one("#config-table", DataTable))
        assert ["train.lr", "0.003"] == config[[r[0] for r in config].index("train.lr")][:2]

        steps = [x for x, _ in loss.lines[0].points]
        await pilot.press("x")  # tokens seen
        await wait_for(pilot, lambda: loss.x_axis == "tokens" and loss.n_points > 0, 10, "the tokens axis")
        assert max(x for x, _ in loss.lines[0].points) == max(steps) * 16 * 32  # batch 16 x seq 32
        await pilot.press("z")
        assert loss.smoothing == 0.6
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_compare_overlays_runs_and_diffs_configs(two_runs):
    db, ids = two_runs
    app = build_app(db)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = runs_screen(app)
        await wait_for(pilot, lambda: screen.query_one("#runs", DataTable).row_count == 2, 10, "rows")
        await pilot.press("c")  # nothing marked: refused with a message, no screen
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("space", "space")
        assert screen.marked == {1, 2}
        await pilot.press("c")
        await wait_for_screen(pilot, app, CompareScreen)
        compare = app.screen
        plot = compare.query_one("#compare-plot", MetricPlot)
        await wait_for(pilot, lambda: all(line.points for line in plot.lines), 10, "both curves")
        assert [line.label for line in plot.lines] == ["#1 shared", "#2 beta"]
        assert plot.lines[0].color != plot.lines[1].color

        await pilot.press("g")
        diff = compare.query_one("#diff-table", DataTable)
        await wait_for(pilot, lambda: diff.row_count > 0, 5, "the diff")
        rows = {row[0]: row[1:] for row in table_text(diff)}
        assert rows == {"train.lr": ["0.003", "0.001"], "train.steps": ["60", "40"]}

        await pilot.press("u")
        summary = compare.query_one("#summary-table", DataTable)
        await wait_for(pilot, lambda: summary.row_count > 0, 10, "the summary")
        text = table_text(summary)
        eval_loss = [row for row in text if row[0] == "eval loss"]
        assert [row[1] for row in eval_loss] == ["last", "best (min)", "at step 40"]  # the common step
        assert all("@40" in cell for cell in eval_loss[2][2:])
        assert compare.query_one("#at-step", Input).value == "40"
        await pilot.press("3")  # plot eval accuracy
        assert compare.metric == "eval_acc"


async def test_bad_input_in_the_form_shows_the_cli_message_and_launches_nothing(db_path, monkeypatch):
    app = build_app(db_path)
    launched = []
    monkeypatch.setattr(app, "start_new_run", lambda *a, **k: launched.append(a))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, app, NewRunScreen)
        form = app.screen
        await wait_for(pilot, lambda: form.config is not None, 5, "the preset to validate")
        form.query_one("#f-model-n_heads", Input).value = "3"
        await pilot.pause()
        message = str(form.query_one("#form-error", Static).content)
        assert message == "model.n_heads = 3: must divide model.d_model = 128"  # the CLI's words
        assert form.query_one("#f-model-n_heads", Input).has_class("-invalid")
        await pilot.press("ctrl+l")
        assert launched == [] and isinstance(app.screen, NewRunScreen)

        form.query_one("#f-model-n_heads", Input).value = "4"
        form.query_one("#f-mask-masking_prob", Input).value = "1.5"
        await pilot.pause()
        assert "mask.masking_prob = 1.5" in str(form.query_one("#form-error", Static).content)
        form.query_one("#f-mask-masking_prob", Input).value = "0.15"
        form.query_one("#extra", Input).value = "train.eval_evry=5"
        await pilot.pause()
        assert "did you mean 'train.eval_every'" in str(form.query_one("#form-error", Static).content)
        await pilot.press("ctrl+l")
        assert launched == []
    assert not db_path.exists()


async def test_form_saves_a_preset_and_lists_it(db_path, tmp_path):
    presets = tmp_path / "experiments"
    app = build_app(db_path, presets_dir=presets)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, app, NewRunScreen)
        form = app.screen
        await wait_for(pilot, lambda: form.config is not None, 5, "validation")
        form.query_one("#f-train-steps", Input).value = "123"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: bool(app.screen.query("#preset-name")), 5, "the name dialog")
        await pilot.press(*"my-preset", "enter")
        await wait_for(pilot, lambda: (presets / "my-preset.toml").exists(), 5, "the preset file")
        text = (presets / "my-preset.toml").read_text()
        assert "steps = 123" in text and text.startswith("# my-preset: saved from the mlmlab app")
        assert form.query_one("#preset", Select).value == "my-preset"
    from mlmlab.config import load_config

    assert load_config(str(presets / "my-preset.toml")).train.steps == 123


async def test_corrupt_database_shows_a_message_and_the_app_keeps_working(tmp_path):
    db = tmp_path / "broken.db"
    db.write_bytes(b"this is not sqlite" * 200)
    app = build_app(db)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = runs_screen(app)
        banner = screen.query_one("#db-error", Static)
        await wait_for(pilot, lambda: banner.display, 10, "the error banner")
        assert "not an SQLite database, or corrupt" in str(banner.content)
        await pilot.press("question_mark")  # still responsive
        await wait_for(pilot, lambda: not isinstance(app.screen, RunsScreen), 5, "help")
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_locked_database_is_reported_not_waited_on(two_runs_copy):
    db, _ids = two_runs_copy
    holder = sqlite3.connect(db)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        app = build_app(db)
        async with app.run_test(size=(100, 30)) as pilot:
            banner = runs_screen(app).query_one("#db-error", Static)
            await wait_for(pilot, lambda: banner.display, 15, "the locked banner")
            assert "locked" in str(banner.content)
            holder.rollback()
            holder.close()
            await wait_for(pilot, lambda: not banner.display, 15, "recovery")
            assert runs_screen(app).query_one("#runs", DataTable).row_count == 2
    finally:
        holder.close()


async def test_vanished_run_folder_is_explained(two_runs_copy):
    db, _ids = two_runs_copy
    with Store(db) as store:
        shutil.rmtree(store.run_dir_for(1))
    app = build_app(db)
    async with app.run_test(size=(120, 36)) as pilot:
        table = runs_screen(app).query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "rows")
        app.open_detail(1)
        await wait_for_screen(pilot, app, RunDetailScreen)
        note = app.screen.query_one("#log-note", Static)
        await wait_for(pilot, lambda: "is gone" in str(note.content), 10, "the note")
        await pilot.press("r")  # resume needs the checkpoint in that folder
        await settle(pilot)
        assert not app.launches
        assert isinstance(app.screen, RunDetailScreen)


async def test_tags_and_note_are_saved_and_filterable(two_runs_copy):
    db, _ids = two_runs_copy
    app = build_app(db)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = runs_screen(app)
        table = screen.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "rows")
        await pilot.press("t")  # on run 2, the newest
        await wait_for(pilot, lambda: bool(app.screen.query("#tags")), 5, "the dialog")
        app.screen.query_one("#tags", Input).value = "baseline, lr-sweep"
        app.screen.query_one("#note", TextArea).text = "the [MASK] note"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "baseline" in screen.rows[2].state["tags"], 10, "the saved tags")
        await pilot.press("slash", *"#base", "enter")
        await wait_for(pilot, lambda: table.row_count == 1, 5, "the tag filter")
    with Store(db, readonly=True) as store:
        run = store.run(2)
    assert run["tags"] == ["baseline", "lr-sweep"] and run["note"] == "the [MASK] note"


async def test_delete_asks_first_and_removes_rows_and_folder(two_runs_copy):
    db, _ids = two_runs_copy
    with Store(db) as store:
        folder = store.run_dir_for(2)
    assert folder.is_dir()
    app = build_app(db)
    async with app.run_test(size=(120, 36)) as pilot:
        table = runs_screen(app).query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "rows")
        await pilot.press("d")
        await wait_for(pilot, lambda: bool(app.screen.query("#ok")), 5, "the confirmation")
        await pilot.press("n")  # no: nothing happens
        await settle(pilot)
        assert folder.is_dir() and table.row_count == 2
        await pilot.press("d")
        await wait_for(pilot, lambda: bool(app.screen.query("#ok")), 5, "the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: table.row_count == 1, 10, "the row to go")
    assert not folder.exists()


async def test_every_key_is_in_the_command_palette(two_runs):
    db, _ids = two_runs
    app = build_app(db)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause()
        titles = {command.title for command in app.get_system_commands(app.screen)}
        for title in ("New run", "Open", "Stop", "Resume", "Delete", "Compare", "Mask explorer", "Help", "Tags/note"):
            assert title in titles
        commands = {c.title: c for c in app.get_system_commands(app.screen)}
        await wait_for(pilot, lambda: runs_screen(app).query_one("#runs", DataTable).row_count == 2, 10, "rows")
        commands["New run"].callback()
        await wait_for_screen(pilot, app, NewRunScreen)


async def test_mask_explorer_key_never_crashes(two_runs):
    db, _ids = two_runs
    app = build_app(db)
    notifications = Notifications()
    async with app.run_test(size=(120, 36), message_hook=notifications) as pilot:
        await wait_for(pilot, lambda: runs_screen(app).query_one("#runs", DataTable).row_count == 2, 10, "rows")
        await pilot.press("m")
        await settle(pilot)
        try:
            import mlmlab.tui.explorer  # noqa: F401
        except ImportError:
            assert isinstance(app.screen, RunsScreen)  # not installed: a notification, no screen
            assert any("not installed" in message for message in notifications.messages)
        else:
            assert not isinstance(app.screen, RunsScreen)


@pytest.mark.parametrize("size", [(80, 24), (60, 20), (200, 50)])
async def test_every_screen_renders_at_small_and_large_sizes(two_runs, size):
    db, _ids = two_runs
    app = build_app(db)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: runs_screen(app).query_one("#runs", DataTable).row_count == 2, 10, "rows")
        app.open_detail(1)
        await wait_for_screen(pilot, app, RunDetailScreen)
        await wait_for(pilot, lambda: app.screen.query_one("#plot-loss", MetricPlot).n_points > 0, 10, "plot")
        for key in ("2", "3", "4", "1"):
            await pilot.press(key)
        await pilot.pause()
        await pilot.press("escape")
        app.open_compare([1, 2])
        await wait_for_screen(pilot, app, CompareScreen)
        for key in ("g", "u", "p"):
            await pilot.press(key)
        await settle(pilot)
        await pilot.press("escape", "n")
        await wait_for_screen(pilot, app, NewRunScreen)
        await pilot.resize_terminal(size[0] + 7, size[1] + 3)
        await pilot.pause()
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_runs_table_fits_narrow_terminals_and_grows_back(two_runs):
    db, _ids = two_runs
    app = build_app(db)
    async with app.run_test(size=(80, 24)) as pilot:
        table = runs_screen(app).query_one("#runs", DataTable)
        await wait_for(pilot, lambda: table.row_count == 2, 10, "rows")
        keys = lambda: [column.key.value for column in table.columns.values()]  # noqa: E731
        assert "started" not in keys() and {"id", "name", "status", "progress", "eval_acc"} <= set(keys())
        await settle(pilot)
        assert table.virtual_size.width <= table.size.width  # nothing to scroll sideways to
        await pilot.resize_terminal(160, 30)
        await wait_for(pilot, lambda: "started" in keys() and table.row_count == 2, 5, "all columns back")
        assert "completed" in str(table.get_cell("1", "status")) and "60/60" in str(table.get_cell("1", "progress"))

def test_the_app_does_not_import_torch_at_start(db_path):
    """Build the app and show its first screen in a fresh interpreter; torch must not be loaded."""
    script = f"""
import asyncio, sys
from pathlib import Path
from mlmlab.tui.app import make_app

async def main():
    from mlmlab.cli import build_parser, db_path
    path = db_path(build_parser().parse_args(["--db", {str(db_path)!r}]))  # the CLI's way in
    before = sorted(m for m in ("sqlite_utils", "numpy", "torch") if m in sys.modules)
    print("BEFORE", before)
    app = make_app(path, poll_interval=0.1)
    async with app.run_test() as pilot:
        for _ in range(50):
            await pilot.pause(0.05)
            if app.screen.loaded:
                break
        assert app.screen.loaded
    heavy = sorted(m for m in ("torch", "numpy", "mlmlab.engine", "mlmlab.model", "pydantic", "plotext") if m in sys.modules)
    print("HEAVY", heavy)

asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before = next(line for line in result.stdout.splitlines() if line.startswith("BEFORE"))
    assert before == "BEFORE []"  # the first screen is not kept waiting for sqlite-utils (and numpy)
    line = next(line for line in result.stdout.splitlines() if line.startswith("HEAVY"))
    heavy = eval(line.removeprefix("HEAVY "))
    assert "torch" not in heavy and "mlmlab.engine" not in heavy and "mlmlab.model" not in heavy
    assert "plotext" not in heavy and "pydantic" not in heavy  # loaded by the screens that plot or validate
