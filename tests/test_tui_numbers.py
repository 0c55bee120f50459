"""Numbers on screen are never cut into other numbers, and progress follows the budget that binds.

The database is made by hand (no training): runs with large step counts, a run that completed
because its time budget ran out, and a GPU-sized tokens/s figure.
"""

from __future__ import annotations

import re

import pytest
from textual.widgets import DataTable, Static
from store_helpers import add_run
from tui_helpers import build_app, settle, wait_for, wait_for_screen

from mlmlab.store import Store
from mlmlab.tui.screens.detail import RunDetailScreen
from mlmlab.tui.screens.runs import RunsScreen

SIZES = [(80, 24), (140, 40)]


@pytest.fixture
def big_runs(db_path):
    with Store(db_path) as store:
        timed = add_run(store, "timed", status="completed", step=1327, total=100_000, max_minutes=5, elapsed=300.0,
                        tokens_per_s=1_234_567.0)
        stepped = add_run(store, "stepped", status="completed", step=250_000, total=250_000, max_minutes=0,
                          elapsed=900.0)
        stopped = add_run(store, "halfway", status="stopped", step=12_345, total=1_000_000, max_minutes=0,
                          elapsed=60.0)
    return db_path, {"timed": timed, "stepped": stepped, "halfway": stopped}


def screen_lines(table: DataTable) -> list[str]:
    """The table's rows as the terminal shows them (cut where the cells cut)."""
    return [table.render_line(y).text for y in range(table.size.height)]


def row_of(lines: list[str], name: str) -> str:
    return next(line for line in lines if f" {name} " in line)


def step_pairs(line: str) -> list[tuple[str, str]]:
    return re.findall(r"(\d[\d.]*[kMG]?)/(\d[\d.]*[kMG]?)", line)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_large_step_counts_are_abbreviated_not_cut(big_runs, size):
    db, ids = big_runs
    app = build_app(db)
    async with app.run_test(size=size) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(
            "#runs", DataTable).row_count == 3, 10, "rows")
        table = app.screen.query_one("#runs", DataTable)
        await settle(pilot)
        lines = screen_lines(table)
        halfway = row_of(lines, "halfway")
        # Either the whole figure or an honest abbreviation: never 12345/100000 or 1234/1000000.
        assert step_pairs(halfway) in ([("12345", "1000000")], [("12k", "1M")]), halfway
        timed = row_of(lines, "timed")
        assert "5m budget" in timed, timed
        assert "1327/10000 " not in timed and all(total in ("100000", "100k") for _, total in step_pairs(timed)), timed
        stepped = row_of(lines, "stepped")
        assert "steps" in stepped and "250000/25000 " not in stepped, stepped
        assert "1,234,56 " not in timed  # the tok/s cell, when shown, is whole or abbreviated
        if size[0] >= 140:
            assert "1.2M" in timed or "1,234,567" in timed, timed


async def test_a_run_ended_by_its_time_budget_reads_complete_in_the_detail(big_runs):
    db, ids = big_runs
    app = build_app(db)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.query_one(
            "#runs", DataTable).row_count == 3, 10, "rows")
        app.open_detail(ids["timed"])
        screen = await wait_for_screen(pilot, app, RunDetailScreen)
        head = screen.query_one("#detail-head", Static)
        await wait_for(pilot, lambda: "complete" in str(head.render()), 10, "detail header")
        text = str(head.render())
        assert "1327/100000 steps" in text and "complete: 5m budget" in text, text
        assert "████████████████████████" in text  # a full bar: the binding budget is used up
