"""The runs screen: every run in the database, live, sortable and filterable."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Center, Horizontal, Vertical
from textual.widgets import DataTable, Footer, Input, Static

from mlmlab.tui.reader import RunsPoll, Stamp, poll_runs
from mlmlab.tui.screens.run_rows import COLUMNS, SORTS, STATUS_FILTERS, RunRow, columns_for
from mlmlab.tui.screens.base import EXPLORER, HELP, RESUME, STOP, LiveScreen, next_of
from mlmlab.vocab import ACTIVE

GUIDE = """Runs live in one SQLite database; this table polls it every second, reading only what changed.
Filter with /: words match name, tags, note and device; status:running, tag:baseline or #baseline narrow further.
Mark runs with space, then c compares them. Runs train as their own processes: quitting leaves them training."""


class RunsScreen(LiveScreen):
    """The home screen."""

    GUIDE = GUIDE
    BINDINGS = [
        Binding("n", "new_run", "New run"),
        Binding("enter", "open", "Open", priority=True),
        STOP,
        RESUME,
        Binding("d", "on_run('delete_run')", "Delete"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        EXPLORER,
        Binding("t", "on_run('edit_tags')", "Tags/note", show=False),
        Binding("slash", "filter", "Filter", show=False),
        Binding("f", "status_filter", "Status filter", show=False),
        Binding("o", "sort", "Sort", show=False),
        Binding("O", "reverse", "Reverse sort", show=False),
        HELP,
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, RunRow] = {}
        self.stamps: dict[int, Stamp] = {}
        self.marked: set[int] = set()
        self.shown: list[int] = []
        self.columns: list[tuple[str, str, int | None]] = list(COLUMNS)
        self.shown_cells: dict[int, list[Any]] = {}
        self.sort_by, self.sort_reverse = "id", True
        self.status_filter = "all"
        self.words: list[str] = []
        self.loaded = False
        self.db_error: str | None = None
        self.missing = False

    def compose(self) -> ComposeResult:
        yield Static(id="title-bar")
        yield Static(id="db-error", classes="banner-error")
        with Horizontal(id="filter-bar"):
            yield Input(placeholder="/ filter: words, status:running, tag:x or #x", id="filter")
            yield Static(id="view-state")
        with Center(id="welcome"):
            with Vertical(id="welcome-box"):
                yield Static(id="welcome-text")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.set_columns(columns_for(self.app.size.width))
        self.update_chrome()
        self.query_one("#runs", DataTable).focus()
        super().on_mount()

    def on_resize(self) -> None:
        columns = columns_for(self.app.size.width)
        if columns != self.columns:
            self.set_columns(columns)
            self.update_table()

    def set_columns(self, columns: list[tuple[str, str, int | None]]) -> None:
        table = self.query_one("#runs", DataTable)
        table.clear(columns=True)
        for key, label, width in columns:
            table.add_column(label, key=key, width=width)
        self.columns = columns
        self.shown = []  # every row is added again, with the new columns

    def _shown_cells(self, cells: list) -> list:
        keys = {key for key, _, _ in self.columns}
        return [cell for (key, _, _), cell in zip(COLUMNS, cells) if key in keys]

    # --- reading -----------------------------------------------------------------------------------

    def request(self) -> dict[int, Stamp]:
        return dict(self.stamps)

    def fetch(self, known: dict[int, Stamp]) -> RunsPoll:
        return poll_runs(self.app.db_path, known)

    def show(self, poll: RunsPoll) -> None:
        self.loaded = True
        self.db_error, self.missing = poll.error, poll.missing
        if poll.error is None:
            states = {s["id"]: s for s in poll.states}
            for run_id in list(self.rows):
                if run_id not in states:
                    del self.rows[run_id]
                    self.marked.discard(run_id)
            for run_id, state in states.items():
                summary = poll.summaries.get(run_id) or (self.rows[run_id].summary if run_id in self.rows else {})
                self.rows[run_id] = RunRow(state, summary)
            self.stamps = poll.stamps
        self.redraw()

    # --- drawing -----------------------------------------------------------------------------------

    def visible_ids(self) -> list[int]:
        wanted = STATUS_FILTERS[self.status_filter]
        rows = [r for r in self.rows.values()
                if (wanted is None or r.state["status"] in wanted) and r.matches(self.words)]
        rows.sort(key=lambda r: (r.sort_key(self.sort_by), r.id), reverse=self.sort_reverse)
        return [r.id for r in rows]

    def redraw(self) -> None:
        """The table and the lines around it, after the rows, marks, filter or sort changed."""
        self.update_table()
        self.update_chrome()

    def update_table(self) -> None:
        table = self.query_one("#runs", DataTable)
        now = time.time()
        ids = self.visible_ids()
        if ids != self.shown:
            current = self.current_id()
            table.clear()
            self.shown_cells = {}
            for run_id in ids:
                cells = self.rows[run_id].cells(run_id in self.marked, now)
                table.add_row(*self._shown_cells(cells), key=str(run_id))
                self.shown_cells[run_id] = cells
            self.shown = ids
            if current in ids:
                table.move_cursor(row=ids.index(current), animate=False)
            return
        for run_id in ids:  # same rows in the same order: touch only the cells that changed
            cells = self.rows[run_id].cells(run_id in self.marked, now)
            old = self.shown_cells.get(run_id, [])
            keys = {key for key, _, _ in self.columns}
            for (key, _, width), new, before in zip(COLUMNS, cells, old):
                if new != before and key in keys:
                    table.update_cell(str(run_id), key, new, update_width=width is None)
            self.shown_cells[run_id] = cells

    def update_chrome(self) -> None:
        app = self.app
        active = sum(1 for r in self.rows.values() if r.state["status"] in ACTIVE)
        title = Text()
        title.append(" mlmlab ", style="bold reverse")
        title.append(f" {app.db_path}  ", style="dim")
        title.append(f"{len(self.rows)} runs")
        if active:
            title.append(f" · {active} training", style="bold green")
        if self.marked:
            title.append(f" · {len(self.marked)} marked (c compares)", style="yellow")
        self.query_one("#title-bar", Static).update(title)

        error = self.query_one("#db-error", Static)
        error.display = self.db_error is not None
        if self.db_error:
            error.update(Text(f"Cannot read the database: {self.db_error}\n"
                              f"The app keeps trying every second; fix the file or start it with another --db."))

        view = Text()
        view.append(f"status: {self.status_filter} ", style="bold" if self.status_filter != "all" else "dim")
        view.append("(f)  ", style="dim")
        view.append(f"sort: {self.sort_by} {'↓' if self.sort_reverse else '↑'} ", style="dim")
        view.append("(o/O)", style="dim")
        self.query_one("#view-state", Static).update(view)

        empty = self.loaded and not self.rows and self.db_error is None
        table = self.query_one("#runs", DataTable)
        self.query_one("#welcome").display = empty
        if table.display != (not empty):
            table.display = not empty
            if not empty and not self.query_one("#filter", Input).value:
                table.focus()  # the first run arrived: the keys act on it
        if empty and self.focused is self.query_one("#filter", Input) and not self.query_one("#filter", Input).value:
            self.set_focus(None)  # with the table hidden, focus fell to the filter: keys must stay keys
        if empty:
            self.query_one("#welcome-text", Static).update(self.welcome_text())

    def welcome_text(self) -> Text:
        text = Text()
        text.append("Welcome to mlmlab\n\n", style="bold")
        where = "does not exist yet; it is created by the first run" if self.missing else "has no runs yet"
        text.append(f"The database {self.app.db_path} {where}.\n\n")
        text.append("Press ")
        text.append(" n ", style="bold reverse")
        text.append(" to configure and launch your first run (the 'quick' preset learns in about 2 minutes on a CPU),\n"
                    "or start one from a shell:  ")
        text.append(f"mlmlab run --db {self.app.db_path}", style="bold")
        text.append("\n\nRuns train in the background; this screen shows them live. ? lists every key.")
        return text

    # --- the row under the cursor --------------------------------------------------------------------

    def current_id(self) -> int | None:
        table = self.query_one("#runs", DataTable)
        if not self.shown or table.cursor_row < 0 or table.cursor_row >= len(self.shown):
            return None
        return self.shown[table.cursor_row]

    def selected_run(self) -> int | None:
        return self.current_id()

    # --- actions ---------------------------------------------------------------------------------

    def action_new_run(self) -> None:
        self.app.open_new_run()

    @on(DataTable.RowSelected)
    def action_open(self) -> None:
        if self.focused is self.query_one("#filter", Input):
            self.query_one("#runs", DataTable).focus()
        elif (run_id := self.selected_run()) is not None:
            self.app.open_detail(run_id)

    def action_mark(self) -> None:
        run_id = self.selected_run()
        if run_id is None:
            return
        self.marked ^= {run_id}
        self.redraw()
        table = self.query_one("#runs", DataTable)
        if table.cursor_row < len(self.shown) - 1:
            table.move_cursor(row=table.cursor_row + 1, animate=False)

    def action_compare(self) -> None:
        ids = sorted(self.marked)
        if len(ids) < 2:
            self.app.say("mark two or more runs with space first, then press c", "warning")
            return
        self.app.open_compare(ids)

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self.query_one("#runs", DataTable).focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.words = event.value.lower().split()
        self.update_table()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.query_one("#runs", DataTable).focus()

    def action_status_filter(self) -> None:
        self.status_filter = next_of(list(STATUS_FILTERS), self.status_filter)
        self.redraw()

    def action_sort(self) -> None:
        self.sort_by = next_of(SORTS, self.sort_by)
        self.redraw()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.redraw()

    @on(DataTable.HeaderSelected)
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = {"progress": "progress", "tok_s": "id"}.get(str(event.column_key.value), str(event.column_key.value))
        if column in SORTS:
            self.sort_reverse = not self.sort_reverse if column == self.sort_by else False
            self.sort_by = column
            self.redraw()
