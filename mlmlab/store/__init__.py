"""The run store: one SQLite database that runs write and everything else reads.

Tables (documented in README.md):
  runs         one row per run: status, config, vocabulary, pid/host/heartbeat, tags, note
  metrics      long form: one row per (run, step, name) with tokens seen, elapsed and wall time
  samples      periodic fixed-prompt predictions, one row per prompt per evaluation
  checkpoints  one row per checkpoint file on disk
  run_summary  a view: one row per run with latest/best eval figures

The package, by job: schema (tables, view, migrations), connection (opening, WAL, read-only,
errors), records (metrics, samples, checkpoints), runs (`Store` and the runs table, rows with
their effective status), liveness (processes, the crashed rule), heartbeat (the beating thread).
"""

from mlmlab.store.connection import BUSY_TIMEOUT_MS, clean_text, describe_sqlite_error
from mlmlab.store.heartbeat import Heartbeat
from mlmlab.store.liveness import HEARTBEAT_EVERY_S, HEARTBEAT_TIMEOUT_S, pid_alive, signal_stop, this_host
from mlmlab.store.runs import RunRow, Store, run_folder
from mlmlab.store.schema import MIN_READ_VERSION, SCHEMA_VERSION, migrations

__all__ = [
    "BUSY_TIMEOUT_MS", "HEARTBEAT_EVERY_S", "HEARTBEAT_TIMEOUT_S", "MIN_READ_VERSION", "SCHEMA_VERSION", "Heartbeat",
    "RunRow", "Store", "clean_text", "describe_sqlite_error", "migrations", "pid_alive", "run_folder", "signal_stop", "this_host",
]
