"""One run in full: status and timing, live plots, the latest samples, its log and its config."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.widgets import DataTable, Footer, Log, Static, TabbedContent, TabPane

from mlmlab.budget import run_budget
from mlmlab.tui.formatting import (bar_text, budget_sentence, fmt_duration, fmt_num, fmt_tokens, kind_legend, run_duration,
                                   run_eta, sample_lines, status_text)
from mlmlab.tui.plots import Line, MetricPlot
from mlmlab.tui.reader import DetailPoll, DetailRequest, poll_detail
from mlmlab.tui.screens.base import BACK, EXPLORER, HELP, PLOT_KEYS, QUIT, RESUME, STOP, PlotScreen
from mlmlab.vocab import ACTIVE, CRASHED, FAILED, STOPPED

# plot id -> (title, [(metric, label, colour)], smoothed)
PLOTS = {
    "plot-loss": ("loss", [("train_loss", "train", "cyan"), ("eval_loss", "eval", "orange")], True),
    "plot-acc": ("eval accuracy", [("eval_acc", "", "green")], True),
    # The curriculum shares the learning rate's panel, on a right-hand axis: both are schedules.
    "plot-lr": ("learning rate · seq_len", [("lr", "lr", "magenta"), ("seq_len", "seq_len (right)", "yellow"),
                                           ("batch_size", "batch (right)", "white")], False),
    "plot-speed": ("tokens/s", [("tokens_per_s", "", "blue")], True),
}
RIGHT_AXIS = {"seq_len", "batch_size"}
LOG_LINES = 2000
GUIDE = """x switches the plots' x axis (step, tokens seen, training time); z cycles smoothing.
Curves are downsampled in SQL to the plot's width (each bucket keeps its min, max and last point) and then
extended with new rows only. Samples show what the model saw (▒ = [MASK]; the legend's colours tell
the mask kinds apart) and what it predicted: green right, red wrong, dim = not chosen."""


class RunDetailScreen(PlotScreen):
    GUIDE = GUIDE
    BINDINGS = [
        BACK,
        STOP,
        RESUME,
        Binding("t", "on_run('edit_tags')", "Tags/note"),
        *PLOT_KEYS,
        EXPLORER,
        Binding("1", "tab('plots')", "Plots tab", show=False),
        Binding("2", "tab('samples')", "Samples tab", show=False),
        Binding("3", "tab('log')", "Log tab", show=False),
        Binding("4", "tab('config')", "Config tab", show=False),
        HELP,
        QUIT,
    ]

    def __init__(self, run_id: int) -> None:
        super().__init__()
        self.run_id = run_id
        self.run: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.stamp = None
        self.sample_step: int | None = None
        self.log_offset = 0
        self.config: dict[str, Any] = {}  # read again only when the poll says it changed (a resume)
        self.config_key: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text(f"run {self.run_id}: reading…", style="dim"), id="detail-head")
        yield Static(id="detail-error", classes="banner-error")
        with TabbedContent(id="detail-tabs", initial="plots"):
            with TabPane("Plots 1", id="plots"):
                yield Static(id="plot-state", classes="plot-state")
                with Grid(id="plot-grid"):
                    for plot_id, (title, _lines, _smoothed) in PLOTS.items():
                        yield MetricPlot(title, id=plot_id)
            with TabPane("Samples 2", id="samples"):
                with VerticalScroll():
                    yield Static(Text("no samples yet: they come with each evaluation", style="dim"), id="samples-text")
            with TabPane("Log 3", id="log"):
                yield Static(id="log-note", classes="field-note")
                yield Log(id="log-view", max_lines=LOG_LINES, auto_scroll=True)
            with TabPane("Config 4", id="config"):
                table = DataTable(id="config-table", cursor_type="row", zebra_stripes=True)
                table.add_columns("key", "value", "about")
                yield table
                yield Static(id="checkpoints")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#detail-error").display = False
        super().on_mount()

    # --- reading -------------------------------------------------------------------------------------

    def request(self) -> DetailRequest:
        plot = self.query_one_optional("#plot-loss", MetricPlot)
        buckets = max(60, plot.size.width if plot else 100)  # about one bucket per column of the plot
        return DetailRequest(self.run_id, self.x_axis, buckets, self.book.last_id.get(self.run_id, 0),
                             self.sample_step, self.log_offset, self.stamp, self.generation, self.config_key)

    def fetch(self, request: DetailRequest) -> DetailPoll:
        return poll_detail(self.app.db_path, request)

    def show(self, poll: DetailPoll) -> None:
        if self.show_read_error("#detail-error", poll.error, "showing what was read before; retrying every second"):
            return
        self.run, self.summary, self.stamp = poll.run, poll.summary, poll.stamp
        if poll.config is not None:
            self.config, self.config_key = poll.config, poll.config_key
            self.show_config_table()
        self.update_head()
        if poll.series is not None and poll.request.generation == self.generation:
            self.book.apply(self.run_id, poll.series, poll.request.buckets)
            if poll.series.full or any(poll.series.points.values()):
                self.update_plots()
        if poll.samples is not None:
            self.sample_step = poll.samples[0]["step"]
            self.show_samples(poll.samples)
        if poll.log is not None:
            self.show_log(poll.log)
        self.show_checkpoints(poll.checkpoints)

    # --- drawing -------------------------------------------------------------------------------------

    def update_head(self) -> None:
        run, summary = self.run, self.summary or {}
        if run is None:
            return
        now = time.time()
        train = self.config.get("train", {})
        head = Text()
        head.append(f"#{run['id']} ", style="bold")
        head.append(run["name"], style="bold")
        head.append("  ")
        head.append_text(status_text(run["status"]))
        if run.get("stop_requested") and run["status"] in ACTIVE:
            head.append("  stopping…", style="yellow")
        params = f"{run['n_params'] / 1e6:.2f}M params" if run.get("n_params") else "params -"
        head.append(f"   {run.get('device') or '-'} · {run.get('precision') or '-'} · {params}"
                    f" · pid {run.get('pid') or '-'} on {run.get('host') or '-'}\n", style="dim")
        elapsed = run_duration(run, now)
        budget = run_budget(run["status"], run["step"], run["total_steps"], elapsed or 0.0, train.get("max_minutes"))
        head.append_text(bar_text(budget.fraction, budget_sentence(budget, run["step"], run["total_steps"], elapsed or 0.0), 24))
        head.append(f"   tokens {fmt_tokens(run.get('tokens'))} · duration {fmt_duration(elapsed)}")
        eta = run_eta(run, train.get("max_minutes") or 0)
        if eta is not None:
            head.append(f" · ETA {fmt_duration(eta)}", style="bold")
        head.append("\n")
        head.append(f"train loss {fmt_num(summary.get('train_loss'), '.3f')} · eval loss "
                    f"{fmt_num(summary.get('eval_loss'), '.3f')} (best {fmt_num(summary.get('best_eval_loss'), '.3f')})"
                    f" · eval acc {fmt_num(summary.get('eval_acc'), '.1%')} (best {fmt_num(summary.get('best_eval_acc'), '.1%')})"
                    f" · {fmt_num(summary.get('tokens_per_s'), ',.0f')} tok/s\n")
        head.append("tags ", style="dim")
        head.append(" ".join(run.get("tags") or []) or "-", style="italic")
        head.append("  note ", style="dim")
        head.append((run.get("note") or "-").replace("\n", " ⏎ "), style="italic")
        if run.get("error") and run["status"] in (FAILED, CRASHED, STOPPED):
            head.append("\n")
            head.append(f"error: {run['error']}", style="bold red")
        elif run["status"] == CRASHED:
            head.append("\n")
            head.append("error: the run's process is gone without finishing (killed, out of memory, or the machine "
                        "restarted); r resumes from its last checkpoint", style="bold red")
        self.query_one("#detail-head", Static).update(head)

    def update_plots(self) -> None:
        with self.app.batch_update():
            for plot_id, (_title, lines, smoothed) in PLOTS.items():
                plot = self.query_one(f"#{plot_id}", MetricPlot)
                plot.show([Line(label, color, self.book.get(self.run_id, metric), metric in RIGHT_AXIS)
                           for metric, label, color in lines],
                          self.x_axis, self.smoothing if smoothed else 0.0)

    def show_samples(self, samples: list[dict[str, Any]]) -> None:
        text = Text()
        right = sum(s["n_correct"] for s in samples)
        chosen = sum(s["n_chosen"] for s in samples)
        text.append(f"step {samples[0]['step']}: {right} of {chosen} chosen positions right\n", style="bold")
        text.append("legend: ", style="dim")
        text.append_text(kind_legend())
        text.append(" →  ", style="dim")
        text.append("right", style="bold green")
        text.append(" ")
        text.append("wrong", style="bold white on red")
        text.append(" unmasked\n\n", style="dim")
        for sample in samples:
            seen, predicted = sample_lines(sample["tokens"])
            text.append(f"#{sample['prompt']} {sample['n_correct']}/{sample['n_chosen']}\n", style="dim")
            text.append("  in  ", style="dim")
            text.append_text(seen)
            text.append("\n  out ", style="dim")
            text.append_text(predicted)
            text.append("\n\n")
        self.query_one("#samples-text", Static).update(text)

    def show_log(self, log) -> None:  # log: reader.LogRead
        view = self.query_one("#log-view", Log)
        note = self.query_one("#log-note", Static)
        note.display = bool(log.note)
        if log.note:
            note.update(Text(log.note, style="yellow"))
        if log.reset:
            view.clear()
        if log.lines:
            view.write_lines(log.lines)
        self.log_offset = log.offset

    def show_config_table(self) -> None:
        """The config tab's table: drawn when the config is read (first poll, and after a resume)."""
        from mlmlab.config import describe, flatten

        table = self.query_one("#config-table", DataTable)
        table.clear()
        for key, value in flatten(self.config).items():
            try:
                about = describe(key)
            except (KeyError, AttributeError, ValueError):
                about = ""
            table.add_row(Text(key), Text(repr(value) if isinstance(value, str) else str(value)), Text(about, style="dim"))

    def show_checkpoints(self, checkpoints: list[dict[str, Any]]) -> None:
        run = self.run
        if run is None:
            return
        text = Text()
        text.append(f"folder {run['run_dir']}\n", style="dim")
        if run.get("command"):
            text.append(f"command {run['command']}\n", style="dim")
        text.append(f"{len(checkpoints)} checkpoints", style="bold")
        for ck in checkpoints[-5:]:
            text.append(f"\n  step {ck['step']}: eval loss {fmt_num(ck.get('eval_loss'), '.3f')}, "
                        f"acc {fmt_num(ck.get('eval_acc'), '.1%')}, {fmt_tokens(ck['bytes'])}B")
        self.query_one("#checkpoints", Static).update(text)

    # --- actions -------------------------------------------------------------------------------------

    def selected_run(self) -> int:
        return self.run_id
