"""Store operations only tests need: built on the store's public API, kept out of `Store` itself."""

from __future__ import annotations

import time
from pathlib import Path

from sqlite_utils import Database

from mlmlab.store import Store, migrations
from mlmlab.vocab import ACTIVE, CRASHED


def mark_crashed(store: Store) -> list[int]:
    """Persist `crashed` for active runs whose process is gone. Returns their ids.

    The update only applies if the row is still exactly as it was read (same stored status, pid
    and heartbeat), so a run that finished, or was resumed, in the meantime is never overwritten.
    """
    marked = []
    for run in store.runs():
        if run["stored_status"] not in ACTIVE or run["status"] != CRASHED:
            continue
        with store.transaction():
            changed = store.db.execute(
                "update runs set status = ?, ended_at = ?, error = ? where id = ? and status = ?"
                " and pid is ? and heartbeat_at is ?",
                [CRASHED, time.time(), "the run's process ended without finishing (killed or lost)", run["id"],
                 run["stored_status"], run["pid"], run["heartbeat_at"]],
            ).rowcount
        if changed:
            marked.append(run["id"])
    return marked


def metric_names(store: Store, run_id: int) -> list[str]:
    return sorted({row["name"] for row in store.metrics(run_id)})


def make_v1_database(path: Path) -> None:
    """A database as mlmlab with schema version 1 left it, holding one crashed-looking queued run."""
    db = Database(path)
    migrations.apply(db, stop_before="m002_summary_queued_crashed")
    db.execute("PRAGMA user_version = 1")
    db["runs"].insert({"name": "old", "status": "queued", "config": "{}", "run_dir": "", "created_at": 1.0,
                       "heartbeat_at": 1.0, "host": "elsewhere", "total_steps": 10})
    db["metrics"].insert({"run_id": 1, "step": 1, "tokens": 1, "elapsed": 0.0, "time": 1.0, "name": "train_loss", "value": 2.5})
    db.conn.commit()
    db.close()


def add_run(store: Store, name: str, *, status: str, step: int, total: int, max_minutes: float, elapsed: float,
            tokens_per_s: float | None = None) -> int:
    """A run as if it had trained to `step` in `elapsed` seconds (no process: pid None), with a tokens/s figure."""
    run_id = store.create_run(name=name, config={"train": {"steps": total, "max_minutes": max_minutes}},
                              vocab={"kind": "char", "chars": "ab"}, total_steps=total)
    now = time.time()
    store.update_run(run_id, status=status, step=step, elapsed=elapsed, started_at=now - elapsed, heartbeat_at=now,
                     ended_at=None if status == "running" else now, pid=None)
    if tokens_per_s:
        store.add_metrics([{"run_id": run_id, "step": step, "tokens": step * 64, "elapsed": elapsed, "time": now,
                            "name": "tokens_per_s", "value": tokens_per_s}])
    return run_id
