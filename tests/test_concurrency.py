"""Concurrent writers (issue 6, requirement 2): four runs write one database while a reader refreshes.

No process sees "database is locked", and each run's rows in the database are exactly what the
run says it logged. Two levels: the store alone (four writer processes hammering it, no torch, a
few seconds), and four `mlmlab run` commands started together on a database that does not exist
yet (so they also race to create it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, TINY_SETS, sets_args
from forked import FaultServer
from mlmlab.errors import StoreError
from mlmlab.store import Store, pid_alive

N_WRITERS = 4

WRITER = r"""
import sys, time
from mlmlab.store import Store, pid_alive
db, seconds = sys.argv[1], float(sys.argv[2])
store = Store(db)  # all four open a database that does not exist yet, at the same moment
run_id = store.create_run(name="w", config={}, vocab={}, total_steps=1)
store.start_run(run_id, device="cpu", precision="fp32", n_params=0)
written, step, end = 0, 0, time.monotonic() + seconds
while time.monotonic() < end:
    step += 1
    rows = [{"run_id": run_id, "step": step, "tokens": step, "elapsed": 0.0, "time": time.time(), "name": f"m{i}",
             "value": float(i)} for i in range(25)]
    store.add_metrics(rows, heartbeat={"run_id": run_id, "step": step})  # any error ends the process: a failure
    written += len(rows)
    store.stop_requested(run_id)
    if step % 20 == 0:
        store.add_samples([{"run_id": run_id, "step": step, "prompt": 0, "text": "a", "masked": "a", "predicted": "a",
                            "tokens": [], "n_chosen": 0, "n_correct": 0}])
store.finish_run(run_id, "completed")
print(run_id, written)
"""


class Reader:
    """What the app does: keep a read-only connection and fetch new rows, and reopen now and then."""

    def __init__(self, db):
        self.db, self.store, self.after = db, None, {}
        self.refreshes, self.errors = 0, []

    def refresh(self) -> None:
        if not self.db.exists():
            return
        try:
            if self.store is None or self.refreshes % 10 == 0:
                if self.store:
                    self.store.close()
                self.store = Store(self.db, readonly=True)
            for row in self.store.summaries():
                new = self.store.metrics(row["id"], after_id=self.after.get(row["id"], 0))
                if new:
                    self.after[row["id"]] = new[-1]["id"]
                self.store.series(row["id"], "train_loss", buckets=50)
            self.refreshes += 1
        except StoreError as exc:
            if "not an mlmlab database yet" in str(exc):  # created this instant, not yet migrated
                self.store = None
                return
            self.errors.append(str(exc))

    def close(self) -> None:
        if self.store:
            self.store.close()


def read_while(procs, reader: Reader, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, "writers did not finish"
        reader.refresh()
        time.sleep(0.02)
    reader.refresh()
    reader.close()


def test_four_store_writers_and_a_reader(tmp_path):
    db = tmp_path / "shared" / "mlmlab.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(N_WRITERS)]
    reader = Reader(db)
    read_while(procs, reader, timeout=120)
    outputs = [p.communicate() for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and "locked" not in err, err
    assert not reader.errors and reader.refreshes > 10, reader.errors[:3]
    claimed = dict(tuple(map(int, out.split())) for out, _ in outputs)
    with Store(db, readonly=True) as store:
        counts = dict(store.db.execute("select run_id, count(*) from metrics group by run_id").fetchall())
        assert {r["status"] for r in store.runs()} == {"completed"}
        assert store.db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert counts == claimed and len(claimed) == N_WRITERS
    print(f"{N_WRITERS} store writers wrote {sum(counts.values())} metric rows, reader refreshed {reader.refreshes} times, 0 errors")


@pytest.mark.slow
def test_four_runs_train_into_one_database(tmp_path, corpus_file):
    """Four `mlmlab run` commands (forked from one process that imported torch, so that four
    imports do not dominate the test) start together on a database that does not exist yet."""
    db = tmp_path / "shared" / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}", "train.steps=100000", "train.max_minutes=0.08",
            "train.log_every=1", "train.eval_every=3", "train.eval_batches=1", "train.checkpoint_every=10",
            "train.batch_size=8", "train.seq_len=16", "model.max_seq_len=16"]
    reader = Reader(db)
    with FaultServer(tmp_path) as server:
        started = server.start_together([["run", "--db", str(db), "--name", f"writer-{i}", *sets_args(sets)]
                                         for i in range(N_WRITERS)])
        deadline = time.monotonic() + 240
        while any(pid_alive(pid) for pid, _ in started):
            assert time.monotonic() < deadline, "the runs did not finish"
            reader.refresh()
            time.sleep(0.02)
        reader.refresh()
        reader.close()
        results = [server.wait() for _ in started]
    logs = [out.read_text() for _, out in started]
    for result, err in zip(results, logs):
        assert result["code"] == 0, err
        assert "locked" not in err and "Traceback" not in err, err
    assert not reader.errors, reader.errors[:3]
    with Store(db, readonly=True) as store:
        runs = {r["name"]: r for r in store.runs()}
        counts = dict(store.db.execute("select run_id, count(*) from metrics group by run_id").fetchall())
        samples = dict(store.db.execute("select run_id, count(*) from samples group by run_id").fetchall())
        for i, err in enumerate(logs):
            run = runs[f"writer-{i}"]
            assert run["status"] == "completed", err
            said = re.search(r"logged (\d+) metric rows, (\d+) samples and (\d+) checkpoints", err)
            assert said, err
            rows, n_samples, n_ckpts = map(int, said.groups())
            assert counts[run["id"]] == rows and samples[run["id"]] == n_samples, (run["id"], err)
            assert len(store.checkpoints(run["id"])) == min(n_ckpts, 5)
        assert store.db.execute("pragma integrity_check").fetchone()[0] == "ok"
    print(f"{N_WRITERS} runs wrote {sum(counts.values())} metric rows and {sum(samples.values())} samples; "
          f"reader refreshed {reader.refreshes} times; 0 errors")
