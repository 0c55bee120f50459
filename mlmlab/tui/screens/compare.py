"""Two or more runs side by side: overlaid curves, the config keys that differ, and a figures table."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Input, Label, Static, TabbedContent, TabPane

from mlmlab.tui.formatting import RICH_COLORS, RUN_COLORS, config_diff, fmt_num, status_text
from mlmlab.tui.plots import Line, MetricPlot
from mlmlab.tui.reader import (LOWER_IS_BETTER, PLOT_METRICS, SUMMARY_METRICS, CompareRequest, ComparePoll,
                               poll_compare)
from mlmlab.tui.screens.base import BACK, HELP, PLOT_KEYS, QUIT, PlotScreen
from mlmlab.vocab import ACTIVE

METRIC_TITLES = {"train_loss": "train loss", "eval_loss": "eval loss", "eval_acc": "eval accuracy",
                 "eval_bpc": "eval bits/char", "lr": "learning rate", "tokens_per_s": "tokens/s", "train_acc": "train accuracy",
                 "grad_norm": "gradient norm", "mem_mb": "memory (MB)"}
FORMATS = {"eval_acc": ".2%", "train_acc": ".2%", "lr": ".3g", "tokens_per_s": ",.0f", "mem_mb": ",.0f",
           "grad_norm": ".3f"}
GUIDE = """[ and ] (or 1-5) pick the metric; every run is one colour, as in the legend at the top.
x switches the x axis (step, tokens seen, training time) and z the smoothing.
Config diff lists only the keys whose values differ. Summary gives each metric's last and best value and
its value at the step you choose (the latest logged at or before it); the best run of each row is green."""


class CompareScreen(PlotScreen):
    GUIDE = GUIDE
    BINDINGS = [
        BACK,
        Binding("left_square_bracket", "metric(-1)", "Prev metric"),
        Binding("right_square_bracket", "metric(1)", "Next metric"),
        *PLOT_KEYS,
        Binding("p", "tab('curves')", "Curves"),
        Binding("g", "tab('diff')", "Config diff"),
        Binding("u", "tab('summary')", "Summary"),
        *[Binding(str(i + 1), f"pick_metric({i})", f"Plot {METRIC_TITLES[m]}", show=False)
          for i, m in enumerate(PLOT_METRICS)],
        HELP,
        QUIT,
    ]

    def __init__(self, run_ids: list[int]) -> None:
        super().__init__()
        self.run_ids = list(run_ids)
        self.metric = "eval_loss"
        self.runs: dict[int, dict[str, Any]] = {}
        self.stats: dict[int, dict[str, dict[str, Any]]] = {}
        self.stale_stats: set[int] = set(run_ids)
        self.at_step: int | None = None
        self.diff_shown = False

    def compose(self) -> ComposeResult:
        yield Static(id="compare-head")
        yield Static(id="compare-error", classes="banner-error")
        with TabbedContent(id="compare-tabs", initial="curves"):
            with TabPane("Curves p", id="curves"):
                yield Static(id="plot-state", classes="plot-state")
                yield MetricPlot(METRIC_TITLES[self.metric], id="compare-plot")
            with TabPane("Config diff g", id="diff"):
                yield Static(id="diff-note", classes="field-note")
                yield DataTable(id="diff-table", zebra_stripes=True, cursor_type="row")
            with TabPane("Summary u", id="summary"):
                with Horizontal(id="at-step-bar"):
                    yield Label("value at step ")
                    yield Input(id="at-step", type="integer", placeholder="step", compact=True)
                yield DataTable(id="summary-table", zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#compare-error").display = False
        super().on_mount()

    # --- reading ---------------------------------------------------------------------------------------

    def request(self) -> CompareRequest:
        active = {i for i, r in self.runs.items() if r["status"] in ACTIVE}
        stats_for = sorted(self.stale_stats | active)  # finished runs' figures are read once per chosen step
        self.stale_stats = set()
        plot = self.query_one_optional("#compare-plot", MetricPlot)
        buckets = max(60, plot.size.width if plot else 100)
        configs_for = [] if self.diff_shown else self.run_ids  # the config diff is drawn once
        return CompareRequest(self.run_ids, self.x_axis, buckets, dict(self.book.last_id), self.at_step, stats_for,
                              self.generation, configs_for)

    def fetch(self, request: CompareRequest) -> ComparePoll:
        return poll_compare(self.app.db_path, request)

    def show(self, poll: ComparePoll) -> None:
        if self.show_read_error("#compare-error", poll.error, "retrying every second"):
            self.stale_stats |= set(poll.request.stats_for)
            return
        self.runs.update(poll.runs)
        if poll.request.at_step != self.at_step:
            self.stale_stats |= set(self.run_ids)
        else:
            self.stats.update(poll.stats)
        if poll.request.generation == self.generation:
            for run_id, read in poll.series.items():
                self.book.apply(run_id, read, poll.request.buckets)
        self.update_head()
        self.update_plots()
        if not self.diff_shown and len(self.runs) == len(self.run_ids):
            self.show_diff()
        if self.at_step is None and self.runs:
            # Compare at the step every run has reached, unless the user picks one.
            self.query_one("#at-step", Input).value = str(min(r["step"] for r in self.runs.values()))
        if poll.stats:
            self.show_summary()

    # --- drawing ---------------------------------------------------------------------------------------

    def color(self, run_id: int, rich: bool = False) -> str:
        palette = RICH_COLORS if rich else RUN_COLORS
        return palette[self.run_ids.index(run_id) % len(palette)]

    def label(self, run_id: int) -> str:
        run = self.runs.get(run_id)
        return f"#{run_id} {run['name']}" if run else f"#{run_id}"

    def update_head(self) -> None:
        head = Text()
        head.append(f"Comparing {len(self.run_ids)} runs   ", style="bold")
        for run_id in self.run_ids:
            run = self.runs.get(run_id)
            head.append("■ ", style=self.color(run_id, rich=True))
            head.append(self.label(run_id) + " ")
            if run:
                head.append_text(status_text(run["status"]))
                head.append(f" {run['step']}/{run['total_steps']}   ", style="dim")
        self.query_one("#compare-head", Static).update(head)

    def update_plots(self) -> None:
        plot = self.query_one("#compare-plot", MetricPlot)
        plot.title = METRIC_TITLES[self.metric]
        lines = [Line(self.label(run_id), self.color(run_id), self.book.get(run_id, self.metric)) for run_id in self.run_ids]
        plot.show(lines, self.x_axis, self.smoothing)

    def plot_state(self) -> Text:
        state = Text()
        for index, metric in enumerate(PLOT_METRICS):
            state.append(f" {index + 1} {METRIC_TITLES[metric]} ", style="bold reverse" if metric == self.metric else "dim")
        state.append("   ")
        return state + super().plot_state()

    def show_diff(self) -> None:
        self.diff_shown = True
        table = self.query_one("#diff-table", DataTable)
        table.clear(columns=True)
        table.add_column("key", key="key")
        for run_id in self.run_ids:
            table.add_column(Text(self.label(run_id), style=self.color(run_id, rich=True)), key=str(run_id))
        rows = config_diff([self.runs[i]["config"] for i in self.run_ids])
        for key, values in rows:
            table.add_row(Text(key), *[Text("-" if v is None else repr(v) if isinstance(v, str) else str(v)) for v in values],
                          key=key)
        note = f"{len(rows)} config keys differ" if rows else "the configs are identical"
        self.query_one("#diff-note", Static).update(Text(note + " (only differing keys are listed)", style="dim"))

    def show_summary(self) -> None:
        table = self.query_one("#summary-table", DataTable)
        table.clear(columns=True)
        table.add_column("metric", key="metric")
        table.add_column("", key="which")
        for run_id in self.run_ids:
            table.add_column(Text(self.label(run_id), style=self.color(run_id, rich=True)), key=str(run_id))
        for metric in SUMMARY_METRICS:
            if not any(metric in self.stats.get(i, {}) for i in self.run_ids):
                continue
            lower = metric in LOWER_IS_BETTER
            for which, field in (("last", "last"), ("best (min)" if lower else "best (max)", "min" if lower else "max"),
                                 (f"at step {self.at_step}" if self.at_step is not None else "at step -", "at")):
                values = {i: self.stats.get(i, {}).get(metric, {}).get(field) for i in self.run_ids}
                present = [v for v in values.values() if v is not None]
                best = (min(present) if lower else max(present)) if len(present) > 1 else None
                spec = FORMATS.get(metric, ".4f")
                cells = []
                for run_id in self.run_ids:
                    value = values[run_id]
                    text = fmt_num(value, spec)
                    if field == "at" and value is not None:
                        text += f" @{self.stats[run_id][metric]['at_step']}"
                    cells.append(Text(text, style="bold green" if value is not None and value == best else ""))
                table.add_row(Text(METRIC_TITLES.get(metric, metric)), Text(which, style="dim"), *cells)

    # --- actions ---------------------------------------------------------------------------------------

    @on(Input.Changed, "#at-step")
    def at_step_changed(self, event: Input.Changed) -> None:
        text = event.value.strip()
        value = int(text) if text.lstrip("-").isdigit() else None
        if value != self.at_step:
            self.at_step = value
            self.stale_stats |= set(self.run_ids)
            self.poll()

    def action_metric(self, delta: int) -> None:
        self.action_pick_metric((PLOT_METRICS.index(self.metric) + delta) % len(PLOT_METRICS))

    def action_pick_metric(self, index: int) -> None:
        self.metric = PLOT_METRICS[index]
        self.query_one("#compare-tabs", TabbedContent).active = "curves"
        self.update_plot_state()
        self.update_plots()
