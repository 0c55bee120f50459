import os
import sqlite3
import subprocess
import sys
import time

import pytest

from mlmlab.errors import StoreError
from mlmlab.store import HEARTBEAT_TIMEOUT_S, SCHEMA_VERSION, Heartbeat, Store
from mlmlab.store.schema import summary_view
from store_helpers import make_v1_database, mark_crashed


def make_run(store, **fields):
    run_id = store.create_run(name="r", config={"train": {}}, vocab={"kind": "char", "chars": "ab"}, total_steps=10)
    if fields:
        store.update_run(run_id, **fields)
    return run_id


def test_schema_version_and_wal(db_path):
    with Store(db_path) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"runs", "metrics", "samples", "checkpoints"} <= set(store.db.table_names())
        assert "run_summary" in store.db.view_names()


def test_newer_schema_is_refused(db_path):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this mlmlab understands"):
        Store(db_path)


def test_not_a_database(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(path)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store(path, readonly=True)


def test_readonly_cannot_write(db_path):
    Store(db_path).close()
    with Store(db_path, readonly=True) as store:
        with pytest.raises(StoreError, match="read-only"):
            make_run(store)


def test_dead_pid_reads_crashed_and_is_persisted(db_path):
    with Store(db_path) as store:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        run_id = make_run(store, status="running", pid=dead.pid)
        assert store.run(run_id)["status"] == "crashed"
        assert store.summaries()[0]["status"] == "crashed"
        assert mark_crashed(store) == [run_id]
        assert store.run(run_id)["stored_status"] == "crashed"


def test_live_run_stays_running_until_heartbeat_times_out(db_path):
    with Store(db_path) as store:
        run_id = make_run(store, status="running", host="elsewhere", heartbeat_at=time.time())
        assert store.run(run_id)["status"] == "running"
        store.update_run(run_id, heartbeat_at=time.time() - 3600)
        assert store.run(run_id)["status"] == "crashed"
        assert store.db.execute("select status from run_summary").fetchone()[0] == "crashed"



def test_heartbeat_thread_beats_while_the_run_is_active_and_stops(db_path):
    # A first step that compiles for minutes must not read as crashed on another host.
    with Store(db_path) as store:
        run_id = make_run(store, status="running", heartbeat_at=1.0)
        other = make_run(store, status="running", heartbeat_at=1.0, pid=os.getpid() + 1)  # not this process's
        heartbeat = Heartbeat(db_path, run_id, every_s=0.05).start()
        try:
            deadline = time.time() + 10
            while store.run(run_id)["heartbeat_at"] < time.time() - 5 and time.time() < deadline:
                time.sleep(0.05)
            assert store.run(run_id)["heartbeat_at"] > time.time() - 5
            store.update_run(run_id, status="completed", heartbeat_at=2.0)
            time.sleep(0.3)
            assert store.run(run_id)["heartbeat_at"] == 2.0  # a finished run is never touched
        finally:
            heartbeat.stop()
        assert not heartbeat._thread.is_alive()
        assert store.run(other)["heartbeat_at"] == 1.0

def test_series_downsampling_keeps_extremes_and_last(db_path):
    with Store(db_path) as store:
        run_id = make_run(store)
        rows = [{"run_id": run_id, "step": s, "tokens": s * 10, "elapsed": s / 10, "time": 0.0, "name": "loss",
                 "value": 5.0 if s == 777 else 1.0 / s} for s in range(1, 5001)]
        store.add_metrics(rows)
        full = store.series(run_id, "loss")
        assert len(full) == 5000
        small = store.series(run_id, "loss", buckets=100)
        assert len(small) <= 300
        assert (777, 5.0) in small  # the spike survives
        assert small[-1] == full[-1]  # the curve ends where the data ends
        assert store.series(run_id, "loss", x="tokens", buckets=10)[-1][0] == 50000
        assert len(store.metrics(run_id, after_id=4990)) == 10


def test_series_downsampling_matches_a_plain_python_reference(db_path):
    # Each bucket keeps exactly its minimum, its maximum and its last point (distinct values: no ties).
    import random

    values = random.Random(3).sample(range(100_000), 3000)
    with Store(db_path) as store:
        run_id = make_run(store)
        store.add_metrics([{"run_id": run_id, "step": s, "tokens": s, "elapsed": s, "time": 0.0, "name": "m",
                            "value": float(v)} for s, v in enumerate(values, start=1)])
        buckets = 37
        expected: set[tuple[float, float]] = set()
        by_bucket: dict[int, list[tuple[int, float]]] = {}
        for s, v in enumerate(values, start=1):
            by_bucket.setdefault(int((s - 1) * buckets / (2999 + 1e-12)), []).append((s, float(v)))
        for points in by_bucket.values():
            expected |= {min(points, key=lambda p: p[1]), max(points, key=lambda p: p[1]), points[-1]}
        assert store.series(run_id, "m", buckets=buckets) == sorted(expected)


def test_delete_run_removes_rows_and_folder(db_path):
    with Store(db_path) as store:
        run_id = make_run(store, status="completed")
        folder = store.run_dir_for(run_id)
        folder.mkdir(parents=True)
        (folder / "ckpt-00000001.pt").write_bytes(b"x")
        store.add_metrics([{"run_id": run_id, "step": 1, "tokens": 1, "elapsed": 0, "time": 0, "name": "x", "value": 1}])
        store.delete_run(run_id)
        assert store.runs() == [] and not folder.exists()
        assert store.db.execute("select count(*) from metrics").fetchone()[0] == 0


def test_delete_refuses_active_run(db_path):
    # A live process whose command line names mlmlab stands in for a training run.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mlmlab"])
    try:
        with Store(db_path) as store:
            run_id = make_run(store, status="running", pid=live.pid)
            with pytest.raises(StoreError, match="stop it before deleting"):
                store.delete_run(run_id)
    finally:
        live.kill()
        live.wait()


def test_errors_about_a_run_carry_its_id(db_path):
    with Store(db_path) as store:
        with pytest.raises(StoreError, match="run 42 not found") as missing:
            store.run(42)
    assert missing.value.run_id == 42 and missing.value.key is None


def test_tags_and_note(db_path):
    with Store(db_path) as store:
        run_id = make_run(store)
        store.set_tags(run_id, ["b", " a", "b", ""])
        store.set_note(run_id, "lr too high?")
        run = store.run(run_id)
        assert run["tags"] == ["a", "b"] and run["note"] == "lr too high?"


def test_foreign_database_refused(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("create table customers (id integer)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not mlmlab's"):
        Store(path)


def test_the_view_and_the_store_share_the_heartbeat_timeout(db_path):
    with Store(db_path) as store:
        sql = store.db.execute("select sql from sqlite_master where name = 'run_summary'").fetchone()[0]
        # A database migrated to this version holds the view as schema.py writes it today: changing
        # HEARTBEAT_TIMEOUT_S without a migration that recreates the view fails here.
        assert " ".join(sql.split()) == " ".join(summary_view("'queued', 'running'").split())
        assert f"unixepoch('now') - {HEARTBEAT_TIMEOUT_S:g} THEN" in sql
        now = time.time()
        fresh = make_run(store, status="running", host="elsewhere", heartbeat_at=now - HEARTBEAT_TIMEOUT_S + 30)
        stale = make_run(store, status="queued", host="elsewhere", heartbeat_at=now - HEARTBEAT_TIMEOUT_S - 30)
        in_sql = dict(store.db.execute("select id, status from run_summary").fetchall())
        assert in_sql == {fresh: "running", stale: "crashed"}
        assert {r["id"]: r["status"] for r in store.runs()} == in_sql
        assert {r["id"]: r["status"] for r in store.run_states()} == in_sql
        assert {r["id"]: r["status"] for r in store.summaries()} == in_sql
        assert store.run(stale)["stored_status"] == "queued"


def test_a_schema_1_database_reads_read_only_with_effective_status(tmp_path):
    db = tmp_path / "old.db"
    make_v1_database(db)
    before = db.read_bytes()
    with Store(db, readonly=True) as store:
        run = store.find_run("old")
        assert (run["status"], run["stored_status"]) == ("crashed", "queued")
        assert store.run(1)["status"] == store.run_lean(1)["status"] == "crashed"
        assert [s["status"] for s in store.summaries()] == ["crashed"]
        assert store.db.execute("select status from run_summary").fetchone()[0] == "queued"  # v1's view
        assert store.series(1, "train_loss") == [(1, 2.5)]
    assert db.read_bytes() == before


def test_run_lean_reads_no_config_or_vocabulary(db_path):
    with Store(db_path) as store:
        run_id = make_run(store, status="stopped")
        store.set_tags(run_id, ["b", "a"])
        full, lean = store.run(run_id), store.run_lean(run_id)
        assert "config" not in lean and "vocab" not in lean
        assert lean == {key: value for key, value in full.items() if key not in ("config", "vocab")}
        assert lean["tags"] == ["a", "b"]
        assert store.run_config(run_id) == full["config"] == {"train": {}}
        with pytest.raises(StoreError, match="not found"):
            store.run_lean(run_id + 1)


def test_the_detail_poll_reads_the_config_only_when_it_may_have_changed(db_path):
    from mlmlab.tui.reader import DetailRequest, poll_detail

    with Store(db_path) as store:
        run_id = make_run(store, status="stopped")
    first = poll_detail(db_path, DetailRequest(run_id, "step", 60))
    assert first.error is None and first.config == {"train": {}} and "config" not in first.run
    again = poll_detail(db_path, DetailRequest(run_id, "step", 60, config_key=first.config_key))
    assert again.config is None and again.config_key == first.config_key  # unchanged: not read
    with Store(db_path) as store:  # a resume rewrites the config, in a new process
        store.update_run(run_id, config='{"train": {"steps": 20}}', pid=os.getpid() + 1)
    resumed = poll_detail(db_path, DetailRequest(run_id, "step", 60, config_key=first.config_key))
    assert resumed.config == {"train": {"steps": 20}}
