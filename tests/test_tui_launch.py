"""The app launching real runs: from the form to `completed`, surviving the app, stopping and resuming."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Log, Select, Static
from conftest import run_cli, sets_args
from tui_helpers import Notifications, build_app, run_status, wait_for, wait_for_screen

from mlmlab.config import load_config, to_toml
from mlmlab.launcher import write_id_file
from mlmlab.store import Store, pid_alive
from mlmlab.tui.screens.detail import RunDetailScreen
from mlmlab.tui.screens.form import NewRunScreen
from mlmlab.tui.launch import Launch, adopt, launches_dir, read_id_file
from mlmlab.tui.plots import MetricPlot
from mlmlab.tui.reader import LOG_NAME
from mlmlab.tui.screens.runs import RunsScreen

TRAIN_TIMEOUT = 180  # a tiny run takes seconds, but this 2-core machine is shared


@pytest.fixture
def presets(tmp_path, tiny_sets):
    """An experiments/ folder holding a tiny preset on the test corpus."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "tinytest.toml").write_text(to_toml(load_config(None, tiny_sets)))
    return folder


def tiny_toml(tiny_sets: list[str], *extra: str) -> str:
    return to_toml(load_config(None, [*tiny_sets, *extra]))


@pytest.mark.slow
async def test_launch_from_the_form_runs_to_completed(db_path, presets):
    app = build_app(db_path, presets_dir=presets, probe_devices=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        form = await wait_for_screen(pilot, app, NewRunScreen)
        form.query_one("#preset", Select).value = "tinytest"
        await wait_for(pilot, lambda: form.query_one("#f-train-steps", Input).value == "40", 5, "the preset's fields")
        form.query_one("#name", Input).value = "from-form"
        # The device list comes from a probe process that imports torch; the form works meanwhile.
        await wait_for(pilot, lambda: app.devices is not None, 60, "the device probe")
        assert any(d["id"] == "cpu" for d in app.devices)
        await wait_for(pilot, lambda: form.config is not None, 5, "validation")
        await pilot.press("ctrl+l")
        runs = await wait_for_screen(pilot, app, RunsScreen)
        await wait_for(pilot, lambda: run_status(app, 1) is not None, TRAIN_TIMEOUT, "the run's row")
        assert runs.rows[1].state["name"] == "from-form"
        await wait_for(pilot, lambda: run_status(app, 1) == "completed", TRAIN_TIMEOUT, "completed")
        await wait_for(pilot, lambda: not app.launches, 10, "the launch watcher to finish")
        assert "40/40" in str(runs.query_one("#runs", DataTable).get_cell("1", "progress"))

        with Store(db_path, readonly=True) as store:
            run = store.run(1)
        log = os.path.join(run["run_dir"], "run.log")
        assert os.path.exists(log)  # moved into the run's folder once it had one
        assert "$ mlmlab run" in open(log).read()
        assert run["config"]["train"]["steps"] == 40 and run["command"].startswith("__main__.py run")

        await pilot.press("enter")
        detail = await wait_for_screen(pilot, app, RunDetailScreen)
        await wait_for(pilot, lambda: detail.query_one("#plot-loss", MetricPlot).n_points > 0, 10, "plots")
        await wait_for(pilot, lambda: "chosen positions right" in str(detail.query_one("#samples-text", Static).content),
                       10, "samples")
        await wait_for(pilot, lambda: detail.query_one("#log-view", Log).line_count > 0, 10, "the log")
        assert not detail.query_one("#log-note", Static).display


@pytest.mark.slow
async def test_a_run_outlives_the_app_and_stops_and_resumes_from_it(db_path, tiny_sets):
    first = build_app(db_path)
    async with first.run_test(size=(120, 36)) as pilot:
        launch = first.start_new_run(tiny_toml(tiny_sets, "train.steps=1000000", "train.checkpoint_every=50"), "long")
        await wait_for(pilot, lambda: run_status(first, 1) == "running", TRAIN_TIMEOUT, "running")
    # The app is closed; the run trains on.
    assert pid_alive(launch.pid)

    second = build_app(db_path)
    async with second.run_test(size=(120, 36)) as pilot:
        screen = await wait_for_screen(pilot, second, RunsScreen)
        await wait_for(pilot, lambda: run_status(second, 1) == "running", 10, "running, seen by a new app")
        before = screen.rows[1].state["step"]
        await wait_for(pilot, lambda: screen.rows[1].state["step"] > before, 30, "live progress")
        await pilot.press("s")
        await wait_for(pilot, lambda: run_status(second, 1) == "stopped", 60, "stopped")
        with Store(db_path, readonly=True) as store:
            stopped_at = store.run(1)["step"]
            assert store.checkpoints(1)[-1]["step"] == stopped_at  # it checkpointed before ending

        await pilot.press("r")
        await wait_for(pilot, lambda: bool(second.screen.query("#steps")), 10, "the resume dialog")
        second.screen.query_one("#steps", Input).value = str(stopped_at + 20)
        await pilot.press("enter")
        await wait_for(pilot, lambda: run_status(second, 1) == "completed", TRAIN_TIMEOUT, "the resumed run to complete")
        await wait_for(pilot, lambda: screen.rows[1].state["step"] == stopped_at + 20, 10, "the new length")
    launch.process.wait(timeout=10)
    with Store(db_path, readonly=True) as store:
        log = os.path.join(store.run(1)["run_dir"], "run.log")
    text = open(log).read()
    assert text.count("$ mlmlab run") == 2 and "--resume 1" in text  # one log, both processes


async def test_a_failed_launch_says_why(db_path, tiny_sets):
    app = build_app(db_path)
    notifications = Notifications()
    async with app.run_test(size=(120, 36), notifications=True, message_hook=notifications) as pilot:
        # Valid to the form, but the corpus vanishes before the run reads it.
        source = next(s.split("=", 1)[1] for s in tiny_sets if s.startswith("data.source="))
        config = tiny_toml(tiny_sets).replace(source, source + ".gone")
        app.start_new_run(config, "doomed")
        await wait_for(pilot, lambda: not app.launches, TRAIN_TIMEOUT, "the run to end")
        messages = notifications.messages
        assert any("'doomed' failed" in m and "data.source" in m for m in messages), messages


def test_a_launch_learns_its_run_from_the_id_file_and_moves_the_log(db_path):
    with Store(db_path) as store:
        run_id = store.create_run(name="r", config={}, vocab={}, total_steps=1, make_dir=True)
        run_dir = Path(store.run(run_id)["run_dir"])
    folder = launches_dir(db_path)
    folder.mkdir(parents=True)
    log = folder / "r.log"
    log.write_text("$ mlmlab run\n")
    launch = Launch(process=None, log_path=log, label="r", id_file=folder / "r.id")
    assert not adopt(launch, db_path) and launch.run_id is None  # the run has not said its id yet
    (folder / "r.id").write_text("1")  # half of "12": read as it is, never as garbage
    assert read_id_file(folder / "r.id") == 1
    write_id_file(launch.id_file, run_id)
    assert launch.id_file.read_text() == f"{run_id}\n" and not (folder / "r.id.tmp").exists()
    assert adopt(launch, db_path) and launch.run_id == run_id
    assert launch.log_path == run_dir / LOG_NAME and launch.log_path.read_text() == "$ mlmlab run\n"
    assert not log.exists() and not launch.id_file.exists()
    (folder / "bad.id").write_text("not an id")
    assert read_id_file(folder / "bad.id") is None and read_id_file(folder / "none.id") is None


@pytest.mark.slow
def test_run_writes_its_id_file_and_keeps_it_out_of_the_recorded_command(db_path, tiny_sets, tmp_path):
    id_file = tmp_path / "launched.id"
    result = run_cli("run", "--db", str(db_path), "--quiet", "--id-file", str(id_file),
                     *sets_args([*tiny_sets, "train.steps=5"]))
    assert result.returncode == 0, result.stderr
    assert id_file.read_text() == "1\n"
    with Store(db_path, readonly=True) as store:
        command = store.run(1)["command"]
    assert "--id-file" not in command and str(id_file) not in command and " run --db " in command
