"""Numerical failure, disk and file faults, old and new databases, read-only paths (issue 6,
requirements 3, 4 and 7).

Each fault gives one clear line, changes nothing else, and leaves no run `queued` or `running`.
Runs train in this process (tiny model, one thread) so each case costs a second or two.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import mlmlab.checkpoints
import mlmlab.engine.schedule
from conftest import TINY_SETS, run_cli
from store_helpers import make_v1_database, mark_crashed
from mlmlab.checkpoints import TEMP_NAME, checkpoint_files, load_checkpoint, step_of
from mlmlab.cli import main
from mlmlab.errors import CheckpointError, StoreError
from mlmlab.model import MaskedLM
from mlmlab.store import SCHEMA_VERSION, Store
from mlmlab.vocab import ACTIVE

FAST = ["train.steps=12", "train.log_every=2", "train.checkpoint_every=4", "train.eval_every=4", "train.eval_batches=1",
        "train.batch_size=8", "train.seq_len=16", "model.max_seq_len=16", "train.keep_checkpoints=0"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sets(corpus_file) -> list[str]:
    return [*TINY_SETS, f"data.source={corpus_file}", *FAST]


def cli(capsys, *argv: str, sets: list[str] = ()) -> tuple[int, list[str]]:
    """`mlmlab ARGV` in this process: (exit status, stderr lines)."""
    capsys.readouterr()
    code = main([*argv, *[f"--set={s}" for s in sets]])
    return code, capsys.readouterr().err.strip().splitlines()


def only_line(lines: list[str]) -> str:
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def fingerprint(db: Path) -> str:
    """The database's content (after folding in its WAL) and the files beside it."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    dump = "\n".join(conn.iterdump())
    conn.close()
    files = sorted(str(p.relative_to(db.parent)) for p in db.parent.rglob("*") if p.is_file() and not p.name.endswith(("-wal", "-shm")))
    return hashlib.sha256((dump + "\n".join(files)).encode()).hexdigest()


def the_run(db: Path, run_id: int = 1) -> dict:
    with Store(db, readonly=True) as store:
        return store.run(run_id)


def assert_not_active(db: Path) -> None:
    with Store(db, readonly=True) as store:
        assert all(r["status"] not in ACTIVE for r in store.runs()), [(r["id"], r["status"]) for r in store.runs()]


def series(db: Path, name: str) -> list[tuple]:
    with Store(db, readonly=True) as store:
        return store.series(1, name)


# --- requirement 3: numerical failure --------------------------------------------------------------


def nan_at(monkeypatch, steps: set[int]) -> None:
    """Make the loss NaN at the given (1-based) training steps."""
    forward, seen = MaskedLM.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        logits, loss = forward(self, *args, **kwargs)
        if self.training and loss is not None:
            seen["n"] += 1
            if seen["n"] in steps:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(MaskedLM, "forward", poisoned)


@pytest.mark.slow
def test_huge_learning_rate_fails_naming_step_and_checkpoint(capsys, db_path, sets, monkeypatch):
    lr_at = mlmlab.engine.schedule.lr_at
    monkeypatch.setattr(mlmlab.engine.schedule, "lr_at", lambda step, cfg, *rest: 1e30 if step >= 5 else lr_at(step, cfg, *rest))
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    line = only_line(err)
    assert code == 1 and "loss became nan at step 7 (last good checkpoint: step 4)" in line, line
    run = the_run(db_path)
    assert run["status"] == "failed" and "step 7" in run["error"] and "last good checkpoint: step 4" in run["error"]
    assert [step_of(p) for p in checkpoint_files(run["run_dir"])] == [4]  # nothing non-finite was saved
    assert torch.isfinite(load_checkpoint(checkpoint_files(run["run_dir"])[0])["model"]["tok_emb.weight"]).all()


@pytest.mark.slow
def test_nan_between_log_and_checkpoint_is_never_saved(capsys, db_path, sets, monkeypatch):
    nan_at(monkeypatch, {5})  # logs at 4 and 8, checkpoint at 6: the weights at 6 are already NaN
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet",
                       sets=[*sets, "train.log_every=4", "train.checkpoint_every=6", "train.eval_every=100"])
    line = only_line(err)
    assert code == 1 and "between step 5 and step 6 (last good checkpoint: none)" in line, line
    run = the_run(db_path)
    assert run["status"] == "failed" and checkpoint_files(run["run_dir"]) == []


@pytest.mark.slow
def test_skip_nonfinite_skips_and_counts(capsys, db_path, sets, monkeypatch):
    nan_at(monkeypatch, {3, 9})
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=[*sets, "train.skip_nonfinite=true"])
    assert code == 0, err
    assert the_run(db_path)["status"] == "completed"
    skipped = series(db_path, "skipped_steps")
    assert sum(v for _, v in skipped) == 2 and dict(skipped)[4] == 1 and dict(skipped)[10] == 1
    assert all(v is not None for _, v in series(db_path, "train_loss"))
    payload = load_checkpoint(checkpoint_files(the_run(db_path)["run_dir"])[-1])
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


# --- requirement 4: disk and files -------------------------------------------------------------------


@pytest.mark.slow
def test_full_disk_while_checkpointing(capsys, db_path, sets, monkeypatch):
    save, calls = torch.save, {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 2:
            return save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(mlmlab.checkpoints.torch, "save", full_disk)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    line = only_line(err)
    assert code == 2 and "cannot write (No space left on device); last good checkpoint: step 4" in line, line
    run = the_run(db_path)
    assert run["status"] == "failed" and "No space left on device" in run["error"]
    folder = Path(run["run_dir"])
    assert [p.name for p in folder.iterdir()] == ["ckpt-00000004.pt"]  # no temp file, no half file
    assert load_checkpoint(folder / "ckpt-00000004.pt")["step"] == 4
    monkeypatch.setattr(mlmlab.checkpoints.torch, "save", save)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", "--resume", "1")  # space again: it goes on
    assert code == 0 and the_run(db_path)["status"] == "completed", err


@pytest.mark.slow
def test_full_disk_on_a_real_tmpfs(capsys, db_path, sets, tmp_path):
    """The same on a real 600 KiB filesystem, where the root may mount one (skipped elsewhere)."""
    folder = db_path.parent / "mlmlab" / "run-1"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=[*sets, "train.steps=1000"])
        line = only_line(err)
        assert code == 2 and "No space left on device" in line and "last good checkpoint: step" in line, line
        assert not [p for p in folder.iterdir() if TEMP_NAME.fullmatch(p.name)]
        for path in checkpoint_files(folder):
            load_checkpoint(path)
        run = the_run(db_path)
        assert run["status"] == "failed" and run["error"] == line.removeprefix("mlmlab: error: ")
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.slow
def test_database_failing_mid_run_keeps_a_rescue_checkpoint(capsys, db_path, sets, monkeypatch):
    add_metrics, calls = Store.add_metrics, {"n": 0}

    def failing(self, rows, heartbeat=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the flush after the evaluation at step 8
            raise StoreError(f"database {self.path}: the disk is full")
        return add_metrics(self, rows, heartbeat)

    monkeypatch.setattr(Store, "add_metrics", failing)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=[*sets, "train.checkpoint_every=100"])
    line = only_line(err)
    assert code == 2 and "the disk is full; saved a checkpoint at step 8" in line and "--resume 1" in line, line
    run = the_run(db_path)
    assert run["status"] == "failed" and "saved a checkpoint" in run["error"]
    rescued = checkpoint_files(run["run_dir"])
    assert [step_of(p) for p in rescued] == [8]
    monkeypatch.setattr(Store, "add_metrics", add_metrics)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", "--resume", "1")
    assert code == 0, err
    with Store(db_path, readonly=True) as store:
        assert store.run(1)["status"] == "completed"
        assert step_of(rescued[0]) in [c["step"] for c in store.checkpoints(1)]  # the rescue got its row


def after_first_call(monkeypatch, method: str, action) -> None:
    """Patch `Store.<method>` so that, once its first call has done its work, `action(row_or_rows)` runs."""
    original, calls = getattr(Store, method), {"n": 0}

    def then_act(self, rows):
        original(self, rows)
        calls["n"] += 1
        if calls["n"] == 1:
            action(rows)

    monkeypatch.setattr(Store, method, then_act)


@pytest.mark.slow
def test_database_deleted_under_a_run_stops_it_loudly(capsys, db_path, sets, monkeypatch):
    def delete_database(_rows):  # after the first evaluation's samples, someone removes the database
        for path in db_path.parent.glob("mlmlab.db*"):
            path.unlink()

    after_first_call(monkeypatch, "add_samples", delete_database)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    line = only_line(err)
    assert code == 2 and "was deleted while it was open" in line and "saved a checkpoint at step 4" in line, line
    assert load_checkpoint(db_path.parent / "mlmlab" / "run-1" / "ckpt-00000004.pt")["step"] == 4


def test_unwritable_run_folder_leaves_no_run(capsys, db_path, sets):
    Store(db_path).close()
    (db_path.parent / "mlmlab").write_text("a file where the run folders should go")
    before = fingerprint(db_path)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    line = only_line(err)
    assert code == 2 and "cannot create the run folder" in line, line
    assert fingerprint(db_path) == before  # no row, nothing else


@contextmanager
def read_only(folder: Path):
    """Make `folder` unwritable for this process: chmod for a normal user; for root (whom modes do
    not stop) a read-only bind mount. Skips the test where neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bind.returncode:
        pytest.skip("cannot make a folder read-only here (root without mount)")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_unwritable_database_folder_and_run_folder(capsys, db_path, sets, trained_run):
    db_path.parent.mkdir(parents=True)
    shutil.copy(trained_run[0], db_path)
    (db_path.parent / "mlmlab").mkdir()
    before = fingerprint(db_path)
    with read_only(db_path.parent / "mlmlab"):  # the database is fine; its runs' folders are not
        code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
        line = only_line(err)
        assert code == 2 and "cannot create the run folder" in line, line
    assert fingerprint(db_path) == before  # the row was rolled back with the folder
    with read_only(db_path.parent):  # now the database's own folder
        for argv in (["run", "--db", str(db_path), "--quiet"], ["run", "--db", str(db_path.parent / "new" / "x.db"), "--quiet"]):
            code, err = cli(capsys, *argv, sets=sets if argv[0] == "run" else ())
            line = only_line(err)
            assert code == 2 and any(why in line for why in ("cannot write in its folder", "cannot create its folder",
                                                             "read-only (cannot write)")), line
        capsys.readouterr()
        assert main(["runs", "--db", str(db_path)]) == 0  # reading still works
        assert "shared" in capsys.readouterr().out
    assert fingerprint(db_path) == before
    assert_not_active(db_path)


@pytest.mark.slow
def test_run_folder_deleted_during_and_after_a_run(capsys, db_path, sets, monkeypatch):
    after_first_call(monkeypatch, "add_checkpoint", lambda row: shutil.rmtree(Path(row["path"]).parent))
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    assert code == 0, err  # the run goes on, writing its folder again
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "completed"
        assert [c["step"] for c in store.checkpoints(1)] == [8, 12]  # no row points at a deleted file
    shutil.rmtree(run["run_dir"])
    with Store(db_path) as store:
        store.update_run(1, status="crashed")
    before = fingerprint(db_path)
    code, err = cli(capsys, "run", "--db", str(db_path), "--resume", "1", "--set", "train.steps=20")
    line = only_line(err)
    assert code == 2 and "folder" in line and "is missing" in line, line
    assert fingerprint(db_path) == before


@pytest.fixture
def finished(capsys, db_path, sets) -> Path:
    """A crashed-looking run with checkpoints at 4, 8 and 12, ready to resume to step 20."""
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=sets)
    assert code == 0, err
    with Store(db_path) as store:
        store.update_run(1, status="crashed")
    return Path(the_run(db_path)["run_dir"])


@pytest.mark.slow
def test_truncated_and_corrupt_checkpoints(capsys, db_path, finished):
    newest = finished / "ckpt-00000012.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    (finished / "ckpt-00000008.pt").write_bytes(random.Random(8).randbytes(4096))  # garbage, the same each run
    for path in (newest, finished / "ckpt-00000008.pt"):
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            load_checkpoint(path)
    code, err = cli(capsys, "run", "--db", str(db_path), "--resume", "1", "--set", "train.steps=20")
    assert code == 0, err
    assert "skipped checkpoint" in "\n".join(err) and "ckpt-00000012.pt: truncated or corrupt" in "\n".join(err)
    assert [s for s, _ in series(db_path, "train_loss")] == list(range(2, 21, 2))  # resumed from 4, no gap
    for path in checkpoint_files(finished):
        load_checkpoint(path)


@pytest.mark.slow
def test_only_broken_checkpoints_change_nothing(capsys, db_path, finished):
    for path in checkpoint_files(finished):
        path.write_bytes(path.read_bytes()[:-10])
    before = fingerprint(db_path)
    code, err = cli(capsys, "run", "--db", str(db_path), "--resume", "1", "--set", "train.steps=20")
    line = only_line(err)
    assert code == 2 and "has no loadable checkpoint" in line and "(and 2 more)" in line, line
    assert fingerprint(db_path) == before


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_pickled_payload_never_runs(capsys, db_path, finished, tmp_path):
    marker = tmp_path / "pwned"
    evil = finished / "ckpt-00000099.pt"
    torch.save({"model": {}, "step": 99, "config": {}, "vocab": {}, "model_args": {}, "x": Exploit(marker)}, evil)
    raw = finished / "ckpt-00000098.pt"
    raw.write_bytes(pickle.dumps(Exploit(marker)))  # a bare pickle, not a torch zip
    for path in (evil, raw):
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        assert "\n" not in str(caught.value)
    assert "refused; it may run code" in str(pytest.raises(CheckpointError, load_checkpoint, evil).value)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", "--resume", "1", "--set", "train.steps=16")
    assert code == 0, err  # resumed from step 12, past both files
    assert not marker.exists()


@pytest.mark.slow
def test_checkpoint_from_another_model_is_one_line(capsys, db_path, finished):
    payload = load_checkpoint(finished / "ckpt-00000012.pt")
    payload["model"] = {k: torch.zeros(3) for k in payload["model"]}
    torch.save(payload, finished / "ckpt-00000016.pt")
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", "--resume", "1", "--set", "train.steps=20")
    line = only_line(err)
    assert code == 2 and "does not fit this run's model" in line, line
    assert_not_active(db_path)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", ["truncate", "flip"])
def test_mutated_checkpoint_bytes_load_or_one_line(tmp_path, finished, mutation):
    good = (finished / "ckpt-00000004.pt").read_bytes()
    bad = tmp_path / "ckpt-00000004.pt"
    for i in range(1, 40):
        cut = len(good) * i // 40
        data = good[:cut] if mutation == "truncate" else good[:cut] + bytes([good[cut] ^ 0xFF]) + good[cut + 1 :]
        bad.write_bytes(data)
        try:
            load_checkpoint(bad)
        except CheckpointError as exc:
            assert "\n" not in str(exc)


# --- requirement 4: database versions ----------------------------------------------------------------


def test_older_database_is_read_as_is_and_migrated_on_write(capsys, tmp_path):
    db = tmp_path / "old.db"
    make_v1_database(db)
    before = fingerprint(db)
    code = main(["runs", "--json", "--db", str(db)])
    assert code == 0 and '"crashed"' in capsys.readouterr().out  # readable, and the dead run reads crashed
    assert fingerprint(db) == before  # a reader does not migrate
    with Store(db) as store:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.db.execute("select status from run_summary").fetchone()[0] == "crashed"  # migration 2's fix
        assert store.series(1, "train_loss") == [(1, 2.5)]


def test_newer_database_is_refused_by_every_command(capsys, db_path, sets):
    Store(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    before = fingerprint(db_path)
    for argv in (["runs", "--db", str(db_path)], ["run", "--db", str(db_path), "--quiet", *[f"--set={s}" for s in sets]],
                 ["run", "--db", str(db_path), "--resume", "1"], ["stop", "1", "--db", str(db_path)]):
        code, err = cli(capsys, *argv)
        assert code == 2 and "newer than this mlmlab understands" in only_line(err), (argv, err)
    assert fingerprint(db_path) == before


def test_concurrent_first_open_migrates_once(tmp_path):
    db = tmp_path / "new.db"
    script = "import sys; from mlmlab.store import Store; Store(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db)], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    errors = [p.communicate()[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    conn = sqlite3.connect(db)
    assert conn.execute("select count(*) from _sqlite_migrations").fetchone()[0] == SCHEMA_VERSION  # each applied once
    conn.close()



def test_first_open_waits_for_another_process_switching_to_wal(tmp_path):
    # While another connection holds the write lock of a file still in rollback mode (as a process
    # half-way through its own switch to WAL does), SQLite refuses the switch at once, without its
    # busy handler: the open must wait and retry, not fail.
    db = tmp_path / "new.db"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("CREATE TABLE placeholder (x)")
    holder.execute("DROP TABLE placeholder")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with Store(db) as store:
            assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert store.runs() == []
    finally:
        release.join()
        holder.close()

# --- requirement 7: what only reads cannot write ------------------------------------------------------


def test_readonly_store_refuses_every_write(db_path, trained_run):
    db = db_path.parent / "copy.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(trained_run[0], db)
    with Store(db) as store:  # a dead run that mark_crashed would want to change
        store.update_run(1, status="running", pid=2**22 + 12345)
    before = fingerprint(db)
    row = {"run_id": 1, "step": 1, "tokens": 1, "elapsed": 0, "time": 0, "name": "x", "value": 1.0}
    with Store(db, readonly=True) as store:
        run = store.run(1)
        attempts = [
            lambda: store.create_run(name="x", config={}, vocab={}, total_steps=1),
            lambda: store.update_run(1, note="x"), lambda: store.finish_run(1, "completed"),
            lambda: mark_crashed(store), lambda: store.request_stop(1), lambda: store.set_tags(1, ["x"]),
            lambda: store.set_note(1, "x"), lambda: store.update_run(1, name="x"), lambda: store.delete_run(1),
            lambda: store.add_metrics([row]), lambda: store.add_samples([]), lambda: store.remove_checkpoint(1, 20),
            lambda: store.truncate_after(1, 0),
            lambda: store.begin_resume(run, {"step": 0, "path": str(db)}),
        ]
        for attempt in attempts:
            with pytest.raises(StoreError, match="read-only"):
                attempt()
        for sql in ("delete from metrics", "drop table runs", "update runs set name = 'x'", "pragma user_version = 7"):
            with pytest.raises(sqlite3.Error):  # SQL a user types in a read-only view
                store.db.execute(sql)
        assert store.run(1)["status"] == "crashed"
    assert fingerprint(db) == before


def test_read_commands_do_not_write(trained_run, tmp_path):
    db = tmp_path / "copy.db"
    shutil.copy(trained_run[0], db)
    before, mtime = fingerprint(db), db.stat().st_mtime_ns
    for argv in (["runs", "--db", str(db)], ["runs", "--json", "--db", str(db)]):
        assert run_cli(*argv).returncode == 0
    missing = tmp_path / "nothing-here.db"
    assert run_cli("run", "--db", str(missing), "--resume", "1").returncode == 2
    assert run_cli("runs", "--db", str(missing)).returncode == 0
    assert fingerprint(db) == before and db.stat().st_mtime_ns == mtime
    assert not missing.exists()  # looking at a database that is not there does not create it


def test_readers_refuse_a_database_whose_folder_is_missing(capsys, tmp_path, monkeypatch):
    """A --db in a folder that is not there is a typo: one line naming the folder, exit 2, nothing created.
    A missing file in a folder that is there is only an empty database; the default runs/ may be missing."""
    missing = tmp_path / "missing"
    db = missing / "x.db"
    for argv in (["runs"], ["runs", "--json"], ["predict", "1", "h{e}llo"], ["stop", "1"]):
        code, err = cli(capsys, *argv, "--db", str(db))
        assert code == 2 and only_line(err) == f"mlmlab: error: database {db}: its folder {missing} does not exist", argv
    for argv in (["--db", str(db)], ["app", "--db", str(db)]):  # the app says it before its UI starts
        result = run_cli(*argv, timeout=60)
        assert result.returncode == 2 and result.stdout == "", (argv, result)
        assert only_line(result.stderr.strip().splitlines()).endswith(f"its folder {missing} does not exist")
    assert not missing.exists() and sorted(tmp_path.iterdir()) == []
    code, err = cli(capsys, "runs", "--db", str(tmp_path / "x.db"))
    assert code == 0 and not err and not list(tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["runs"]) == 0 and "no runs yet in runs/mlmlab.db" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_stop_on_a_database_file_that_is_not_there_creates_nothing(capsys, tmp_path):
    db = tmp_path / "typo.db"
    code, err = cli(capsys, "stop", "1", "--db", str(db))
    assert code == 2 and only_line(err) == f"mlmlab: error: database {db}: no such file"
    assert not list(tmp_path.iterdir())


def test_store_stop_and_broken_database_give_one_line(capsys, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 500)
    for argv in (["runs", "--db", str(junk)], ["stop", "1", "--db", str(junk)], ["run", "--resume", "1", "--db", str(junk)]):
        code, err = cli(capsys, *argv)
        assert code == 2 and "not an SQLite database" in only_line(err), (argv, err)
    folder = tmp_path / "a-folder.db"
    folder.mkdir()
    code, err = cli(capsys, "runs", "--db", str(folder))
    assert code == 2 and "is a folder" in only_line(err)


# --- a run's state is always true ---------------------------------------------------------------------


def test_state_checks_never_overwrite_a_run_that_moved_on(db_path, monkeypatch):
    with Store(db_path) as store:
        run_id = store.create_run(name="r", config={}, vocab={}, total_steps=1)
        store.update_run(run_id, status="running", pid=2**22 + 4321)  # a pid that is not alive
        stale = store.runs()
        store.finish_run(run_id, "completed")  # it finished after the app read the table
        monkeypatch.setattr(Store, "runs", lambda self: stale)
        assert mark_crashed(store) == []
        monkeypatch.undo()
        assert store.run(run_id)["status"] == "completed"
        store.update_run(run_id, status="crashed")
        seen = store.run(run_id)
        store.update_run(run_id, heartbeat_at=time.time())  # another process claimed it meanwhile
        with pytest.raises(StoreError, match="changed while preparing to resume"):
            store.begin_resume(seen, {"step": 0, "path": str(db_path)})
        assert store.run(run_id)["status"] == "crashed"


def test_a_live_local_run_is_not_crashed_by_a_late_heartbeat(db_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "mlmlab"])  # stands in for a run
    try:
        with Store(db_path) as store:
            run_id = store.create_run(name="r", config={}, vocab={}, total_steps=1)
            store.update_run(run_id, status="running", pid=live.pid, heartbeat_at=time.time() - 3600)
            assert store.run(run_id)["status"] == "running"  # a long evaluation, not a crash
    finally:
        live.kill()
        live.wait()
    with Store(db_path, readonly=True) as store:
        assert store.run(run_id)["status"] == "crashed"


def test_run_folders_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Store("runs/mlmlab.db") as store:
        run_id = store.create_run(name="r", config={}, vocab={}, total_steps=1, make_dir=True)
        folder = Path(store.run(run_id)["run_dir"])
    assert folder.is_absolute() and folder == tmp_path / "runs" / "mlmlab" / "run-1" and folder.is_dir()


def test_training_in_process_gives_signals_back(capsys, db_path, sets):
    import signal

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, err = cli(capsys, "run", "--db", str(db_path), "--quiet", sets=[*sets, "train.steps=2"])
    assert code == 0, err
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_odd_database_paths_open_read_only(tmp_path):
    """The read-only open goes through a file: URI; '?', '#', '%' and spaces in the path must not
    cut it short (which would open, or create, another file)."""
    for name in ("a?mode=rwc.db", "b#frag.db", "c%20d.db", "e f ü.db"):
        path = tmp_path / name
        with Store(path) as store:
            store.create_run(name=name, config={}, vocab={}, total_steps=1)
        with Store(path, readonly=True) as store:
            assert [r["name"] for r in store.runs()] == [name]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == sorted(
        ("a?mode=rwc.db", "b#frag.db", "c%20d.db", "e f ü.db"))


def test_a_reader_can_tell_its_database_was_deleted_or_replaced(tmp_path):
    """For the app: SQLite goes on reading a deleted file's inode, so Store.check_same_file() says so."""
    path = tmp_path / "mlmlab.db"
    Store(path).close()
    with Store(path, readonly=True) as store:
        store.check_same_file()
        other = tmp_path / "other.db"
        Store(other).close()
        os.replace(other, path)
        with pytest.raises(StoreError, match="was replaced by another file while it was open"):
            store.check_same_file()
    with Store(path, readonly=True) as store:
        path.unlink()
        with pytest.raises(StoreError, match="was deleted while it was open"):
            store.check_same_file()
