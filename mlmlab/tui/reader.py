"""Reading the run database for the app: in worker threads, read-only, incremental.

Every function here runs in a thread worker and opens its own read-only `Store` (a SQLite
connection belongs to the thread that opened it). Each poll is cheap: the runs screen reads the
lean `runs` rows and re-reads summaries only of runs that changed; plots read downsampled series
once and then only metric rows with a larger id; logs are read from the last byte offset.
Problems come back as one-line messages in the result, never as exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlmlab.errors import MlmlabError
from mlmlab.tui.formatting import bucket_points

READ_BUSY_MS = 1500  # a locked database is reported after this, not waited on for 30 s
LOG_NAME = "run.log"  # the app's launches write the run's output here, in the run's folder
LOG_TAIL_BYTES = 64 * 1024
PLOT_METRICS = ("train_loss", "eval_loss", "eval_acc", "lr", "tokens_per_s")
# The detail screen also draws the sequence-length curriculum (batch_size is logged only when it changes).
DETAIL_METRICS = (*PLOT_METRICS, "seq_len", "batch_size")
# eval_bpc (held-out bits per character) is the figure that compares a char run with a subword run.
SUMMARY_METRICS = ("train_loss", "train_acc", "eval_loss", "eval_acc", "eval_bpc", "lr", "grad_norm", "tokens_per_s", "mem_mb")
LOWER_IS_BETTER = {"train_loss", "eval_loss", "eval_bpc", "grad_norm", "step_ms", "mem_mb"}

Stamp = tuple
Points = list[tuple[float, float]]


class DatabaseMissing(MlmlabError):
    """The database file does not exist yet (no run was ever started with it)."""


def read_only_store(db_path: Path) -> Any:
    """The app's read-only Store for this thread, with the short busy timeout. Raises StoreError."""
    from mlmlab.store import Store

    return Store(db_path, readonly=True, busy_timeout_ms=READ_BUSY_MS)


@contextmanager
def reader(db_path: Path) -> Iterator[Any]:
    """A read-only Store for this thread, closed afterwards. Raises DatabaseMissing or StoreError."""
    if not db_path.exists():
        raise DatabaseMissing(f"{db_path} does not exist yet")
    store = read_only_store(db_path)
    try:
        yield store
    finally:
        store.close()


def describe_error(exc: BaseException) -> str:
    """One line for the user; anything unexpected still says what it was rather than crash the app."""
    if isinstance(exc, MlmlabError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --- the runs table ---------------------------------------------------------------------------


def stamp(state: dict[str, Any]) -> Stamp:
    """What must change in a run's lean row for its summary to be worth re-reading."""
    return (state["status"], state["step"], state["heartbeat_at"], state["ended_at"], state["name"],
            state["tags"], state["note"], state["stop_requested"], state["total_steps"])


@dataclass
class RunsPoll:
    states: list[dict[str, Any]] = field(default_factory=list)  # every run, lean rows
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)  # only runs whose stamp changed
    stamps: dict[int, Stamp] = field(default_factory=dict)
    missing: bool = False
    error: str | None = None


def poll_runs(db_path: Path, known: dict[int, Stamp]) -> RunsPoll:
    try:
        with reader(db_path) as store:
            states = store.run_states()
            stamps = {s["id"]: stamp(s) for s in states}
            changed = [run_id for run_id, st in stamps.items() if known.get(run_id) != st]
            summaries = {row["id"]: row for row in store.summaries(changed)} if changed else {}
            return RunsPoll(states, summaries, stamps)
    except DatabaseMissing:
        return RunsPoll(missing=True)
    except Exception as exc:  # noqa: BLE001 - shown in the app, which keeps polling
        return RunsPoll(error=describe_error(exc))


# --- series for plots --------------------------------------------------------------------------


@dataclass
class SeriesRead:
    points: dict[str, list[tuple[float, float]]]
    last_id: int
    full: bool  # True: replace what you have; False: append


def read_series(store: Any, run_id: int, names: Iterable[str], x_axis: str, buckets: int, after_id: int) -> SeriesRead:
    """Downsampled in SQL on the first read (after_id 0); afterwards only rows newer than after_id."""
    names = list(names)
    if not after_id:
        last_id = store.last_metric_id(run_id)
        points = {name: store.series(run_id, name, x=x_axis, buckets=buckets) for name in names}
        return SeriesRead(points, last_id, True)
    rows = store.metrics(run_id, names, after_id=after_id)
    points: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for row in rows:
        if row["value"] is not None:
            points[row["name"]].append((row[x_axis], row["value"]))
    return SeriesRead(points, rows[-1]["id"] if rows else after_id, False)


class SeriesBook:
    """Points per (run, metric) kept by a screen: replaced on a full read, extended on an incremental one.

    Points are downsampled in SQL on the first read; appended ones are re-bucketed in memory when they
    outgrow the plot, so a long-open screen stays as faithful as a fresh read without re-reading the run.
    """

    def __init__(self) -> None:
        self.points: dict[tuple[int, str], Points] = {}
        self.last_id: dict[int, int] = {}

    def reset(self) -> None:
        self.points.clear()
        self.last_id.clear()

    def apply(self, run_id: int, read: SeriesRead, buckets: int) -> None:
        for name, new in read.points.items():
            key = (run_id, name)
            if read.full:
                self.points[key] = list(new)
            elif new:
                merged = self.points.setdefault(key, []) + new
                self.points[key] = bucket_points(merged, buckets)
        self.last_id[run_id] = read.last_id

    def get(self, run_id: int, name: str) -> Points:
        return self.points.get((run_id, name), [])

    def total_points(self) -> int:
        return sum(len(p) for p in self.points.values())



# --- a run's log ---------------------------------------------------------------------------------


@dataclass
class LogRead:
    lines: list[str]
    offset: int
    reset: bool  # the file is new or shorter: replace the shown tail
    note: str | None = None  # why there is no log


def read_log(run_dir: str | None, offset: int) -> LogRead:
    if not run_dir:
        return LogRead([], 0, True, "this run has no folder recorded")
    folder = Path(run_dir)
    if not folder.is_dir():
        return LogRead([], 0, True, f"the run's folder {folder} is gone (deleted or moved): no log, checkpoints or resume")
    path = folder / LOG_NAME
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return LogRead([], 0, True, f"no {LOG_NAME} in {folder}: this run was started from a shell, its output went there")
    except OSError as exc:
        return LogRead([], 0, True, f"cannot read {path}: {exc.strerror}")
    reset = size < offset or offset == 0
    start = max(0, size - LOG_TAIL_BYTES) if reset else offset
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(size - start)
    except OSError as exc:
        return LogRead([], offset, False, f"cannot read {path}: {exc.strerror}")
    # Only whole lines; a partial last line is read again next time.
    cut = data.rfind(b"\n") + 1
    text = data[:cut].decode("utf-8", errors="replace")
    lines = text.splitlines()
    if reset and start > 0 and lines:
        lines = lines[1:]  # the first line of a tail window is probably cut
    # A progress bar's carriage returns: keep what a terminal would show last.
    lines = [line.rsplit("\r", 1)[-1] for line in lines]
    return LogRead(lines, start + cut, reset)


# --- the run detail screen -----------------------------------------------------------------------


@dataclass
class DetailRequest:
    run_id: int
    x_axis: str
    buckets: int
    after_id: int = 0
    sample_step: int | None = None
    log_offset: int = 0
    stamp: Stamp | None = None  # the run's stamp at the last read; metrics are re-read from 0 if the run restarted
    generation: int = 0  # the screen's plot generation when asked: answers to an older one are dropped
    config_key: tuple | None = None  # config_key() of the run when its config was last read


@dataclass
class DetailPoll:
    request: DetailRequest
    run: dict[str, Any] | None = None  # the lean row: no config or vocabulary
    config: dict[str, Any] | None = None  # None: unchanged since config_key
    config_key: tuple | None = None
    summary: dict[str, Any] | None = None
    stamp: Stamp | None = None
    series: SeriesRead | None = None
    samples: list[dict[str, Any]] | None = None  # None: unchanged since sample_step
    log: LogRead | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def config_key(run: dict[str, Any]) -> tuple:
    """What changes whenever a run's config may have: only a resume rewrites it, in a new process
    that then starts (new pid, new start time)."""
    return (run["pid"], run["started_at"])


def poll_detail(db_path: Path, request: DetailRequest) -> DetailPoll:
    """One second's read of the detail screen; the config is read only when config_key changed."""
    result = DetailPoll(request)
    try:
        with reader(db_path) as store:
            run = store.run_lean(request.run_id)
            result.run = run
            result.stamp = stamp(run)
            result.config_key = config_key(run)
            if result.config_key != request.config_key:
                result.config = store.run_config(request.run_id)
            summaries = store.summaries([request.run_id])
            result.summary = summaries[0] if summaries else None
            after_id = request.after_id
            if request.stamp and run["step"] < request.stamp[1]:
                after_id = 0  # a resume truncated metrics past its checkpoint: start over
            result.series = read_series(store, request.run_id, DETAIL_METRICS, request.x_axis, request.buckets, after_id)
            latest = store.samples(request.run_id)
            if latest and latest[0]["step"] != request.sample_step:
                result.samples = latest
            result.checkpoints = store.checkpoints(request.run_id)
        result.log = read_log(run["run_dir"], request.log_offset)
    except Exception as exc:  # noqa: BLE001 - shown in the app
        result.error = describe_error(exc)
    return result


# --- the compare screen --------------------------------------------------------------------------


@dataclass
class CompareRequest:
    run_ids: list[int]
    x_axis: str
    buckets: int
    after_ids: dict[int, int] = field(default_factory=dict)
    at_step: int | None = None
    stats_for: list[int] = field(default_factory=list)  # runs whose figures may have changed
    generation: int = 0
    configs_for: list[int] = field(default_factory=list)  # runs whose config the screen still needs


@dataclass
class ComparePoll:
    request: CompareRequest
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)  # lean run rows (with config for configs_for)
    series: dict[int, SeriesRead] = field(default_factory=dict)
    stats: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    error: str | None = None


def poll_compare(db_path: Path, request: CompareRequest) -> ComparePoll:
    result = ComparePoll(request)
    try:
        with reader(db_path) as store:
            for run_id in request.run_ids:
                run = store.run_lean(run_id)
                if run_id in request.configs_for:
                    run["config"] = store.run_config(run_id)
                result.runs[run_id] = run
                result.series[run_id] = read_series(store, run_id, PLOT_METRICS, request.x_axis, request.buckets,
                                                    request.after_ids.get(run_id, 0))
                if run_id in request.stats_for:
                    result.stats[run_id] = store.metric_stats(run_id, SUMMARY_METRICS, request.at_step)
    except Exception as exc:  # noqa: BLE001 - shown in the app
        result.error = describe_error(exc)
    return result


def file_size(path: str | os.PathLike) -> int:
    """Bytes under a folder (for the delete confirmation); 0 when it is gone."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total
