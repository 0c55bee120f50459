"""`Store`, the one class callers use: the runs table here, on top of what runs record and the connection.

Every run row the store returns carries its effective status in `status` (an active run whose
process is gone reads `crashed`, see liveness.py), so no caller re-derives it. Rows of `run`,
`runs` and `find_run` also keep the column's own value in `stored_status`: the compare-and-set of
`begin_resume` needs what is written, not what it means.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

from mlmlab.budget import ended_by
from mlmlab.errors import StoreError
from mlmlab.store.connection import clean_text
from mlmlab.store.liveness import effective_status, this_host
from mlmlab.store.records import RecordQueries
from mlmlab.vocab import ACTIVE, QUEUED, RUNNING, STATUSES

# The columns of `runs` but its two JSON documents (config, vocab): a row cheap to read every second.
LEAN_COLUMNS = (
    "id", "name", "status", "run_dir", "created_at", "started_at", "ended_at", "heartbeat_at", "pid", "host",
    "device", "precision", "n_params", "step", "total_steps", "tokens", "elapsed", "error", "stop_requested",
    "tags", "note", "command",
)
# Added by schema version 3 (a read-only open of an older database has none of them).
DISTRIBUTED_COLUMNS = ("world_size", "global_batch", "ranks")
# A run's time budget, read from its config without decoding it in Python (NULL when the JSON is broken).
MAX_MINUTES_SQL = "CASE WHEN json_valid(r.config) THEN json_extract(r.config, '$.train.max_minutes') END AS max_minutes"


class RunRow(TypedDict, total=False):
    """A run as `run`, `runs`, `find_run` and `run_lean` return it: a plain dict (JSON as it is).

    Keys are the `runs` columns (README.md), with `config`, `vocab` and `tags` decoded; `run_lean`
    leaves out `config` and `vocab`.
    """

    id: int
    name: str
    status: str  # effective: an active run whose process is gone reads crashed
    stored_status: str  # the column as written
    config: dict[str, Any]
    vocab: dict[str, Any] | None
    run_dir: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    heartbeat_at: float | None
    pid: int | None
    host: str | None
    device: str | None
    precision: str | None
    n_params: int | None
    step: int
    total_steps: int
    tokens: int
    elapsed: float
    error: str | None
    stop_requested: int
    tags: list[str]
    note: str
    command: str | None
    world_size: int  # processes that train it (1 unless torchrun); schema 3
    global_batch: int | None  # sequences per optimizer step over all processes; schema 3
    ranks: list[dict[str, Any]] | None  # each rank's rank, local_rank, host, device and pid; schema 3


def run_folder(db_path: str | Path, run_id: int) -> Path:
    """Where a run's files live: a folder next to the database, as an absolute path (a run
    started from one directory must be found from any other)."""
    path = Path(db_path).resolve()
    return path.parent / path.stem / f"run-{run_id}"


class Store(RecordQueries):
    """The run database: open one per thread or process; `Store(path, readonly=True)` only reads.

    See connection.py for how it opens (WAL, busy timeout, read-only fallbacks), records.py for
    metrics, samples and checkpoints; the runs table is here.
    """

    def run_dir_for(self, run_id: int) -> Path:
        return run_folder(self.path, run_id)

    def create_run(self, *, name: str, config: dict, vocab: dict, total_steps: int, command: str = "",
                   make_dir: bool = False) -> int:
        """Insert a queued run. With `make_dir`, its folder is created inside the same transaction:
        if the folder cannot be made, no row is left behind."""
        now = time.time()
        with self.transaction():
            run_id = self.db["runs"].insert(
                {
                    "name": clean_text(name),
                    "status": QUEUED,
                    "config": json.dumps(config),
                    "vocab": json.dumps(vocab),
                    "run_dir": "",
                    "created_at": now,
                    "heartbeat_at": now,
                    "pid": os.getpid(),
                    "host": this_host(),
                    "total_steps": total_steps,
                    "command": clean_text(command),
                }
            ).last_pk
            run_dir = self.run_dir_for(run_id)
            self.db["runs"].update(run_id, {"run_dir": str(run_dir)})
            if make_dir:
                try:
                    run_dir.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the run folder {run_dir} ({exc.strerror})") from None
        return run_id

    def update_run(self, run_id: int, **fields: Any) -> None:
        fields = {k: clean_text(v) if isinstance(v, str) else v for k, v in fields.items()}
        with self.transaction():
            self.db["runs"].update(run_id, fields)

    def start_run(self, run_id: int, *, device: str, precision: str, n_params: int, world_size: int = 1,
                  global_batch: int | None = None, ranks: list[dict[str, Any]] | None = None) -> None:
        """Mark a run running under this process (rank 0 of a torchrun run), with its world size."""
        now = time.time()
        self.update_run(
            run_id, status=RUNNING, started_at=now, heartbeat_at=now, ended_at=None, error=None,
            pid=os.getpid(), host=this_host(), device=device, precision=precision, n_params=n_params,
            stop_requested=0, world_size=world_size, global_batch=global_batch,
            ranks=json.dumps(ranks) if ranks is not None else None,
        )

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        assert status in STATUSES
        self.update_run(run_id, status=status, error=error, ended_at=time.time(), heartbeat_at=time.time())

    def run(self, run_id: int) -> RunRow:
        """A run's whole row, config and vocabulary decoded, with its effective status (see `_decode_run`)."""
        return _decode_run(self._one_run("select * from runs where id = ?", run_id))

    def runs(self) -> list[RunRow]:
        return [_decode_run(row) for row in self._query("select * from runs order by id")]

    def run_lean(self, run_id: int) -> RunRow:
        """A run's row without its config and vocabulary (neither read nor decoded): what a screen polls.

        Tags are decoded and `status` is effective, as in `run`; `run_config` reads the config.
        """
        row = _with_effective_status(self._one_run(f"select {', '.join(self._lean_columns())} from runs where id = ?", run_id))
        row["tags"] = json.loads(row.get("tags") or "[]")
        _decode_ranks(row)
        return row

    def _lean_columns(self) -> tuple[str, ...]:
        """LEAN_COLUMNS and, on a schema-3 database, DISTRIBUTED_COLUMNS (read once per connection)."""
        if not hasattr(self, "_lean"):
            present = {row["name"] for row in self._query("select name from pragma_table_info('runs')")}
            self._lean = LEAN_COLUMNS + tuple(c for c in DISTRIBUTED_COLUMNS if c in present)
        return self._lean

    def run_config(self, run_id: int) -> dict[str, Any]:
        return json.loads(self._one_run("select config from runs where id = ?", run_id)["config"])

    def _one_run(self, sql: str, run_id: int) -> dict[str, Any]:
        rows = self._query(sql, [run_id])
        if not rows:
            raise StoreError(f"run {run_id} not found in {self.path}", run_id=run_id)
        return rows[0]

    def summaries(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """`run_summary` rows (all, or those of `ids`) with the status made effective (dead local pids read as crashed)."""
        where, params = "", []
        if ids is not None:
            params = list(ids)
            where = f" where s.id in ({','.join('?' * len(params))})"
        # One statement, so one snapshot: a run inserted by another process between two reads
        # cannot appear in one and not the other.
        world_size = "r.world_size" if "world_size" in self._lean_columns() else "1"  # schema 3
        rows = self._query(
            f"select s.*, {MAX_MINUTES_SQL}, {world_size} as world_size, r.status as _status, r.pid as _pid, r.host as _host,"
            " r.heartbeat_at as _heartbeat_at, r.created_at as _created_at"
            f" from run_summary s join runs r on r.id = s.id{where} order by s.id",
            params,
        )
        for row in rows:
            raw = {key[1:]: row.pop(key) for key in ("_status", "_pid", "_host", "_heartbeat_at", "_created_at")}
            row["status"] = effective_status(raw)
            row["tags"] = json.loads(row["tags"] or "[]")
            row["ended_by"] = ended_by(row["status"], row["steps"], row["total_steps"], row["max_minutes"])
        return rows

    def run_states(self) -> list[dict[str, Any]]:
        """One lean row per run (no config, vocabulary or metrics): cheap enough to poll every second.

        Readers compare these rows between polls to find the runs that changed; `status` is effective.
        """
        rows = self._query(
            "select id, name, status, step, total_steps, tokens, elapsed, created_at, started_at, ended_at,"
            f" heartbeat_at, pid, host, stop_requested, tags, note, {MAX_MINUTES_SQL} from runs r order by id"
        )
        return [_with_effective_status(row, keep_stored=False) for row in rows]

    def find_run(self, ref: str | int) -> RunRow:
        """A run by id, or by name (the newest run of that name)."""
        text = str(ref).strip()
        if text.isdigit():
            return self.run(int(text))
        rows = self._query("select id from runs where name = ? order by id desc limit 1", [text])
        if not rows:
            raise StoreError(f"no run with id or name {text!r} in {self.path}")
        return self.run(rows[0]["id"])

    def request_stop(self, run_id: int) -> None:
        self.update_run(run_id, stop_requested=1)

    def stop_requested(self, run_id: int) -> bool:
        rows = self._query("select stop_requested from runs where id = ?", [run_id])
        return bool(rows and rows[0]["stop_requested"])

    def set_tags(self, run_id: int, tags: list[str]) -> None:
        clean = sorted({t.strip() for t in tags if t.strip()})
        self.update_run(run_id, tags=json.dumps(clean))

    def set_note(self, run_id: int, note: str) -> None:
        self.update_run(run_id, note=note)

    def delete_run(self, run_id: int) -> None:
        """Delete a run's rows and its folder. Refuses while it is training."""
        run = self.run(run_id)
        if run["status"] in ACTIVE:
            raise StoreError(f"run {run_id} is {run['status']}; stop it before deleting", run_id=run_id)
        with self.transaction():
            for table in ("metrics", "samples", "checkpoints"):
                self.db.execute(f"delete from {table} where run_id = ?", [run_id])
            self.db.execute("delete from runs where id = ?", [run_id])
        shutil.rmtree(run["run_dir"], ignore_errors=True)

    def beat(self, run_id: int, pid: int) -> None:
        """Refresh an active run's heartbeat, if it still belongs to process `pid` on this host."""
        with self.transaction():
            self.db.execute(
                "update runs set heartbeat_at = ? where id = ? and pid = ? and host = ?"
                f" and status in ({','.join('?' * len(ACTIVE))})",
                [time.time(), run_id, pid, this_host(), *ACTIVE],
            )

    def begin_resume(self, run: dict[str, Any], checkpoint: dict[str, Any], **fields: Any) -> int:
        """Claim a stopped, failed or crashed run for resuming from `checkpoint`, in one transaction.

        `run` is the row as read when the resume was checked: if it changed since (another process
        resumed it first) nothing is touched. History is cut back to the checkpoint (metrics,
        samples and checkpoint rows after its step go, so the curves match the weights), checkpoint
        rows whose file is gone are dropped, the checkpoint resumed from gets a row if its writer
        died before adding one, and the run is queued under this process. Returns the number of
        metric rows removed.
        """
        run_id, step = run["id"], checkpoint["step"]
        with self.transaction():
            now = self._query("select status, pid, heartbeat_at from runs where id = ?", [run_id])
            if not now or (now[0]["status"], now[0]["pid"], now[0]["heartbeat_at"]) != (
                run["stored_status"], run["pid"], run["heartbeat_at"]
            ):
                raise StoreError(f"run {run_id} changed while preparing to resume it (resumed elsewhere?); try again",
                                 run_id=run_id)
            removed = self.truncate_after(run_id, step)
            self.drop_missing_checkpoints(run_id)
            path = Path(checkpoint["path"])
            self.db.execute(
                "insert or ignore into checkpoints (run_id, step, path, bytes, tokens, created_at) values (?, ?, ?, ?, ?, ?)",
                [run_id, step, str(path), path.stat().st_size, checkpoint.get("tokens", 0), path.stat().st_mtime],
            )
            self.db["runs"].update(run_id, {
                "status": QUEUED, "step": step, "tokens": checkpoint.get("tokens", 0),
                "elapsed": checkpoint.get("elapsed", 0.0), "error": None,
                "pid": os.getpid(), "host": this_host(), "heartbeat_at": time.time(), **fields,
            })
        return removed


def _with_effective_status(row: dict[str, Any], keep_stored: bool = True) -> dict[str, Any]:
    if keep_stored:
        row["stored_status"] = row["status"]
    row["status"] = effective_status(row)
    return row


def _decode_run(row: dict[str, Any]) -> RunRow:
    """A whole `runs` row for callers: JSON columns decoded, `status` effective, `stored_status` as written."""
    row = _with_effective_status(dict(row))
    row["config"] = json.loads(row["config"])
    row["vocab"] = json.loads(row["vocab"]) if row.get("vocab") else None
    row["tags"] = json.loads(row.get("tags") or "[]")
    _decode_ranks(row)
    return row


def _decode_ranks(row: dict[str, Any]) -> None:
    """`ranks` as a list (None when never recorded); a database older than schema 3 has no column."""
    if "ranks" in row:
        row["ranks"] = json.loads(row["ranks"]) if row["ranks"] else None
