"""The app's pure parts, the store queries it relies on, and how the form marks the field an error names."""

from __future__ import annotations

import json
import os
import time

import pytest

from mlmlab.errors import ConfigError
from mlmlab.store import Store
from mlmlab.tui.formatting import (bucket_points, config_diff, fmt_duration, progress_text, run_eta, sample_lines,
                                   smooth, status_text)
from mlmlab.tui.reader import LOG_NAME, poll_runs, read_log, read_series


def test_progress_bar_fills_in_proportion():
    assert progress_text(0, 100, width=10).plain == " " * 10 + " 0/100"
    assert progress_text(50, 100, width=10).plain.startswith("█" * 5 + " ")
    assert progress_text(100, 100, width=10).plain.startswith("█" * 10)
    assert progress_text(5, 0, width=4).plain == "     5/0"  # no total: an empty bar, no division by zero


def test_failed_and_crashed_stand_out():
    for status in ("failed", "crashed"):
        assert "on" in str(status_text(status).style)  # a background colour, not just a tint
    assert "on" not in str(status_text("completed").style)


def test_duration_and_eta():
    assert fmt_duration(5) == "5s" and fmt_duration(125) == "2m05s" and fmt_duration(3 * 3600 + 60) == "3h01m"
    running = {"status": "running", "step": 100, "total_steps": 400, "elapsed": 50.0}
    assert run_eta(running) == pytest.approx(150.0)
    assert run_eta(running, max_minutes=1.0) == pytest.approx(10.0)  # the time limit comes first
    assert run_eta({**running, "status": "completed"}) is None


def test_smoothing_is_debiased_and_optional():
    assert smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    smoothed = smooth([4.0, 4.0, 4.0], 0.9)
    assert smoothed == pytest.approx([4.0, 4.0, 4.0])  # no pull towards zero at the start
    assert smooth([0.0, 10.0], 0.5)[1] < 10.0


def test_bucketing_keeps_spikes_and_the_last_point():
    points = [(float(i), 1.0) for i in range(1000)]
    points[500] = (500.0, 99.0)
    points[501] = (501.0, -5.0)
    kept = bucket_points(points, 20)
    assert len(kept) <= 60
    values = [v for _, v in kept]
    assert 99.0 in values and -5.0 in values
    assert kept[-1] == points[-1]
    assert bucket_points(points[:10], 20) == points[:10]  # small series pass through


def test_sample_lines_colour_right_wrong_and_unmasked():
    tokens = [["a", "a", "a", "none"], ["b", "[MASK]", "b", "mask"], ["c", "x", "z", "random"], [" ", " ", "q", "keep"]]
    seen, predicted = sample_lines(tokens)
    assert seen.plain == "a▒x␣"
    assert predicted.plain == "abzq"
    styles = {span.start: str(span.style) for span in predicted.spans}
    assert styles[0] == "dim" and styles[1] == "bold green" and "red" in styles[2] and "red" in styles[3]


def test_sample_lines_keep_literal_brackets():
    seen, predicted = sample_lines([["[", "[", "[", "none"], ["MASK", "MASK", "MASK", "none"], ["]", "]", "]", "none"]])
    assert seen.plain == "[MASK]" and predicted.plain == "[MASK]"


def test_config_diff_lists_only_differing_keys():
    a = {"train": {"lr": 0.1, "steps": 10}, "model": {"d_model": 32}}
    b = {"train": {"lr": 0.2, "steps": 10}, "model": {"d_model": 32}}
    assert config_diff([a, b]) == [("train.lr", [0.1, 0.2])]
    assert config_diff([a, a]) == []


def test_read_log_tails_incrementally(tmp_path):
    run_dir = tmp_path / "run-1"
    assert "gone" in read_log(str(run_dir), 0).note
    run_dir.mkdir()
    assert "started from a shell" in read_log(str(run_dir), 0).note
    log = run_dir / LOG_NAME
    log.write_text("one\ntwo\npart")
    first = read_log(str(run_dir), 0)
    assert first.lines == ["one", "two"] and first.reset
    with log.open("a") as handle:
        handle.write("ial\nthree\n")
    second = read_log(str(run_dir), first.offset)
    assert second.lines == ["partial", "three"] and not second.reset
    log.write_text("new\n")  # shorter: the file was replaced
    assert read_log(str(run_dir), second.offset).reset


def _fake_run(store: Store, name: str, steps: int, lr: float) -> int:
    run_id = store.create_run(name=name, config={"train": {"lr": lr, "steps": steps}}, vocab={}, total_steps=steps)
    rows = []
    for step in range(1, steps + 1):
        for metric, value in (("train_loss", 5.0 / step), ("eval_acc", step / steps)):
            rows.append({"run_id": run_id, "step": step, "tokens": step * 100, "elapsed": step * 0.5,
                         "time": time.time(), "name": metric, "value": value})
    store.add_metrics(rows)
    store.finish_run(run_id, "completed")
    return run_id


def test_store_stats_states_and_incremental_series(db_path):
    with Store(db_path) as store:
        first = _fake_run(store, "a", 200, 0.1)
        second = _fake_run(store, "b", 50, 0.2)
    with Store(db_path, readonly=True) as store:
        stats = store.metric_stats(first, ["train_loss", "eval_acc", "missing"], at_step=100)
        assert set(stats) == {"train_loss", "eval_acc"}
        assert stats["train_loss"]["last"] == pytest.approx(5.0 / 200) and stats["train_loss"]["max"] == pytest.approx(5.0)
        assert stats["eval_acc"]["at"] == pytest.approx(0.5) and stats["eval_acc"]["at_step"] == 100
        assert [s["status"] for s in store.run_states()] == ["completed", "completed"]
        assert [r["id"] for r in store.summaries([second])] == [second]
        full = read_series(store, first, ["train_loss"], "tokens", 20, 0)
        assert full.full and len(full.points["train_loss"]) <= 60 and full.points["train_loss"][-1][0] == 20000
        assert full.last_id == store.last_metric_id(first)
        assert not read_series(store, first, ["train_loss"], "step", 20, full.last_id).points["train_loss"]


def test_poll_runs_rereads_only_changed_runs(db_path):
    assert poll_runs(db_path, {}).missing
    with Store(db_path) as store:
        first = _fake_run(store, "a", 20, 0.1)
        second = _fake_run(store, "b", 20, 0.2)
    poll = poll_runs(db_path, {})
    assert set(poll.summaries) == {first, second}
    with Store(db_path) as store:
        store.set_note(second, "changed")
    again = poll_runs(db_path, poll.stamps)
    assert set(again.summaries) == {second} and len(again.states) == 2


def test_poll_runs_reports_a_corrupt_database(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(os.urandom(4096))
    poll = poll_runs(bad, {})
    assert poll.error and "not an SQLite database" in poll.error and not poll.states


def test_run_states_reads_dead_local_pids_as_crashed(db_path):
    with Store(db_path) as store:
        run_id = store.create_run(name="ghost", config={}, vocab={}, total_steps=10)
        store.update_run(run_id, status="running", pid=2**22 + 12345)  # no such process
        assert store.run_states()[0]["status"] == "crashed"
        assert json.loads(store.run_states()[0]["tags"]) == []



def test_errors_name_the_widget_to_mark():
    from mlmlab.tui.screens.form import field_id, invalid_widget_id

    assert invalid_widget_id("train.steps") == field_id("train.steps") == "f-train-steps"
    assert [invalid_widget_id(key) for key in ("name", "device", "preset")] == ["name", "device", "preset"]
    # Keys no widget shows: a list entry's section key, an unknown key, a whole section, no key at all.
    assert {invalid_widget_id(key) for key in ("mask.no_mask_tokens", "train.stepz", "data", None)} == {None}


async def test_the_form_marks_the_field_from_the_error_key(db_path, monkeypatch):
    from textual.widgets import Input, Static
    from tui_helpers import build_app, wait_for, wait_for_screen

    from mlmlab.tui.screens import form as form_module

    app = build_app(db_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        await wait_for_screen(pilot, app, form_module.NewRunScreen)
        form = app.screen
        await wait_for(pilot, lambda: form.config is not None, 5, "the preset to validate")

        def refuse(*_args, **_kwargs):  # words that name no field: only the key can say which one is wrong
            raise ConfigError("the learning rate will not do", key="train.lr", value=-1)

        monkeypatch.setattr(form_module.config_module, "load_config", refuse)
        form.query_one("#f-train-steps", Input).value = "77"
        await pilot.pause()
        assert str(form.query_one("#form-error", Static).content) == "the learning rate will not do"
        assert form.query_one("#f-train-lr", Input).has_class("-invalid")
        assert not form.query_one("#f-train-steps", Input).has_class("-invalid")
