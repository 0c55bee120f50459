"""The database schema: tables, the `run_summary` view and the migrations between versions.

`PRAGMA user_version` holds the version. A migration is history: once released its text never
changes; a new schema is a new migration. The view is written from HEARTBEAT_TIMEOUT_S, so the
SQL and the store's Python apply one timeout; changing that constant needs a migration that
recreates the view (tests/test_store.py compares a migrated database's view with this text).
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

from mlmlab.store.liveness import HEARTBEAT_TIMEOUT_S

SCHEMA_VERSION = 3
MIN_READ_VERSION = 1  # read-only opens accept these older schemas (the differences do not matter to readers)
TABLES = ("runs", "metrics", "samples", "checkpoints")

migrations = Migrations("mlmlab")

# One row per run. `{active}` lists the statuses that read as crashed once the heartbeat is older
# than `{timeout}` seconds (SQL cannot see pids: Store.summaries() also checks those).
RUN_SUMMARY_VIEW = """
        CREATE VIEW run_summary AS
        SELECT
            r.id, r.name,
            CASE WHEN r.status IN ({active}) AND r.heartbeat_at < unixepoch('now') - {timeout} THEN 'crashed'
                 ELSE r.status END AS status,
            r.step AS steps, r.total_steps, r.tokens, r.device, r.precision, r.n_params,
            (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'train_loss' ORDER BY m.step DESC LIMIT 1) AS train_loss,
            (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'eval_loss' ORDER BY m.step DESC LIMIT 1) AS eval_loss,
            (SELECT min(value) FROM metrics m WHERE m.run_id = r.id AND m.name = 'eval_loss') AS best_eval_loss,
            (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'eval_acc' ORDER BY m.step DESC LIMIT 1) AS eval_acc,
            (SELECT max(value) FROM metrics m WHERE m.run_id = r.id AND m.name = 'eval_acc') AS best_eval_acc,
            (SELECT value FROM metrics m WHERE m.run_id = r.id AND m.name = 'tokens_per_s' ORDER BY m.step DESC LIMIT 1) AS tokens_per_s,
            round(r.elapsed, 1) AS duration_s,
            datetime(r.started_at, 'unixepoch', 'localtime') AS started,
            datetime(r.ended_at, 'unixepoch', 'localtime') AS ended,
            r.tags, r.note, r.error
        FROM runs r
"""


def summary_view(active: str) -> str:
    """The CREATE VIEW statement of `run_summary`; `active` is a SQL list of quoted statuses."""
    return RUN_SUMMARY_VIEW.format(active=active, timeout=f"{HEARTBEAT_TIMEOUT_S:g}")


# The tables as version 1 created them (later versions change them only through migrations).
V1_TABLES = """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('queued','running','completed','failed','stopped','crashed')),
            config TEXT NOT NULL,          -- resolved experiment config, JSON
            vocab TEXT,                    -- tokenizer vocabulary, JSON
            run_dir TEXT NOT NULL,         -- checkpoints and log live here
            created_at REAL NOT NULL,      -- unix seconds
            started_at REAL,
            ended_at REAL,
            heartbeat_at REAL,
            pid INTEGER,
            host TEXT,
            device TEXT,
            precision TEXT,
            n_params INTEGER,
            step INTEGER NOT NULL DEFAULT 0,
            total_steps INTEGER NOT NULL,
            tokens INTEGER NOT NULL DEFAULT 0,
            elapsed REAL NOT NULL DEFAULT 0,  -- training seconds, summed over resumes
            error TEXT,
            stop_requested INTEGER NOT NULL DEFAULT 0,
            tags TEXT NOT NULL DEFAULT '[]',  -- JSON list of strings
            note TEXT NOT NULL DEFAULT '',
            command TEXT
        );
        CREATE TABLE metrics (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            elapsed REAL NOT NULL,
            time REAL NOT NULL,
            name TEXT NOT NULL,
            value REAL
        );
        CREATE INDEX metrics_run_name_step ON metrics (run_id, name, step);
        CREATE INDEX metrics_run_id ON metrics (run_id, id);
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            prompt INTEGER NOT NULL,       -- which fixed prompt
            text TEXT NOT NULL,            -- the original text
            masked TEXT NOT NULL,          -- what the model saw
            predicted TEXT NOT NULL,       -- the text with chosen positions filled by the model
            tokens TEXT NOT NULL,          -- JSON: [[original, shown, predicted, kind], ...]
            n_chosen INTEGER NOT NULL,
            n_correct INTEGER NOT NULL
        );
        CREATE INDEX samples_run_step ON samples (run_id, step);
        CREATE TABLE checkpoints (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            step INTEGER NOT NULL,
            path TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            created_at REAL NOT NULL,
            eval_loss REAL,
            eval_acc REAL,
            UNIQUE (run_id, step)
        );
"""


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(V1_TABLES + summary_view("'running'"))


@migrations()
def m002_summary_queued_crashed(db: Database) -> None:
    """run_summary: a queued run whose heartbeat stopped is crashed too (v1 only checked running)."""
    db.execute("DROP VIEW IF EXISTS run_summary")
    db.execute(summary_view("'queued', 'running'"))


@migrations()
def m003_world_size(db: Database) -> None:
    """runs: how many processes trained the run (torchrun), the sequences per optimizer step over all
    of them (batch_size x grad_accum_steps x world size) and each rank's host and device (JSON list).
    Set at every start: a resume may run on another world size. Older rows read world size 1."""
    db.execute("ALTER TABLE runs ADD COLUMN world_size INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE runs ADD COLUMN global_batch INTEGER")
    db.execute("ALTER TABLE runs ADD COLUMN ranks TEXT")
