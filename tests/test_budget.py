"""Which budget binds a run, and how its figures are written when a cell is narrow."""

from __future__ import annotations

import json

import pytest
from store_helpers import add_run

from mlmlab.budget import STEPS, TIME, ended_by, minutes_text, run_budget
from mlmlab.cli import main
from mlmlab.store import Store
from mlmlab.tui.formatting import count_text, fit


def test_the_nearer_budget_binds_and_a_completed_run_says_which_ended_it():
    by_steps = run_budget("running", 800, 1000, 150.0, 5)  # 80% of the steps, 50% of the time
    assert (by_steps.binding, by_steps.fraction) == (STEPS, pytest.approx(0.8))
    by_time = run_budget("running", 100, 1000, 150.0, 5)  # 10% of the steps, 50% of the time
    assert (by_time.binding, by_time.fraction, by_time.complete) == (TIME, pytest.approx(0.5), False)
    assert run_budget("running", 100, 1000, 150.0, 0).binding == STEPS  # no time budget
    timed = run_budget("completed", 1327, 100_000, 300.0, 5)
    assert (timed.complete, timed.fraction, timed.binding, timed.reason) == (True, 1.0, TIME, "5m budget")
    assert run_budget("completed", 100, 100, 10.0, 5).reason == STEPS
    assert ended_by("completed", 1327, 100_000, 5) == TIME and ended_by("completed", 10, 10, 0) == STEPS
    assert ended_by("stopped", 5, 10, 1) is None and ended_by("running", 5, 10, 1) is None


def test_minutes_and_counts_are_written_short_but_whole():
    assert [minutes_text(m) for m in (5, 0.5, 2.5, 60, 90, 120)] == ["5m", "30s", "2.5m", "1h", "1h30m", "2h"]
    assert [count_text(n) for n in (999, 1327, 12_345, 100_000, 999_999, 1_500_000, 10**10)] == [
        "999", "1.3k", "12k", "100k", "1M", "1.5M", "10G"]
    assert fit(["1327/100000", "1.3k/100k"], 10) == "1.3k/100k"
    assert fit(["1327/100000", "1.3k/100k"], 11) == "1327/100000"
    assert fit(["cuda:10"], 6) == "cuda:…"  # nothing shorter is honest: the cut shows


def test_mlmlab_runs_says_which_budget_ended_a_run(capsys, db_path):
    with Store(db_path) as store:
        add_run(store, "timed", status="completed", step=1327, total=100_000, max_minutes=5, elapsed=300.0)
        add_run(store, "stepped", status="completed", step=50, total=50, max_minutes=5, elapsed=10.0)
        add_run(store, "going", status="stopped", step=100, total=100_000, max_minutes=5, elapsed=150.0)
    assert main(["runs", "--db", str(db_path)]) == 0
    table = capsys.readouterr().out
    assert "1327/100000  complete: 5m budget" in table and "50/50        complete: steps" in table
    assert "50% of 5m" in table
    assert main(["runs", "--json", "--db", str(db_path)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert [rows[name]["ended_by"] for name in ("timed", "stepped", "going")] == ["time", "steps", None]
    assert rows["timed"]["max_minutes"] == 5
