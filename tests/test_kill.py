"""Killed runs lose nothing (issue 6, requirement 1).

One run is killed with SIGKILL again and again: inside a training step, inside a metric flush
(after the INSERT, before COMMIT, and just after COMMIT), before an evaluation's samples, at three
moments of a checkpoint write, while pruning old checkpoints, right after `--resume` claimed the
run, and at random moments from outside. After every kill: `PRAGMA integrity_check` is ok, the run
reads `crashed` (to the store and to `mlmlab runs --json`), every metric row the process had
committed is still there, every `ckpt-*.pt` loads (a half-written one never has a real name), and
`mlmlab run --resume` continues from the newest checkpoint, keeping the history up to it exactly.
At the end the resumed run completes, and its curves have no gap and no duplicate.

The kill points are drawn from a fixed seed, so every run of the test kills at the same points;
MLMLAB_KILL_SEED=random draws new ones (the seed is printed and named in every failure), a number
repeats that draw, and MLMLAB_KILL_POINTS sets how many (default 12). Runs go through tests/mlmlab_fault_server.py, which
imports torch once and forks a child per command, so a kill point costs well under a second.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import TINY_SETS, sets_args
from forked import FaultServer
from mlmlab.checkpoints import CKPT_NAME, TEMP_NAME, checkpoint_files, load_checkpoint, step_of
from mlmlab.store import Store

LOG_EVERY, EVAL_EVERY, CKPT_EVERY, KEEP = 2, 6, 4, 3
KILL_SETS = [
    "train.steps=100000", f"train.log_every={LOG_EVERY}", f"train.eval_every={EVAL_EVERY}", "train.eval_batches=1",
    f"train.checkpoint_every={CKPT_EVERY}", f"train.keep_checkpoints={KEEP}", "train.batch_size=8", "train.seq_len=16",
    "model.max_seq_len=16",
]
# Kill points after the first run (which always dies right after its second checkpoint file
# appears, before the row): every fault of the fault server, and two kills from outside.
KINDS = ["step", "flush", "flushed", "samples", "ckpt-write", "ckpt-rename", "ckpt-row", "prune", "resume-start",
         "outside", "outside"]
HITS = {"step": (1, 25), "flush": (1, 4), "flushed": (1, 4), "samples": (1, 2), "ckpt-write": (1, 3),
        "ckpt-rename": (1, 3), "ckpt-row": (1, 3), "prune": (1, 2), "resume-start": (1, 1)}
DEFAULT_SEED = 11


def kill_seed() -> int:
    """MLMLAB_KILL_SEED: unset, DEFAULT_SEED; `random`, a fresh draw; a number, that draw again."""
    chosen = os.environ.get("MLMLAB_KILL_SEED", "")
    if chosen == "random":
        return random.randrange(10**6)
    return int(chosen) if chosen else DEFAULT_SEED


def rows(db: Path, run_id: int = 1) -> dict[int, tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    found = {r[0]: tuple(r[1:]) for r in conn.execute("select id, step, name, value from metrics where run_id = ?", [run_id])}
    conn.close()
    return found


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)  # a writer, as the next run will be: it recovers the WAL first
    result = conn.execute("pragma integrity_check").fetchone()[0]
    conn.close()
    return result


def wait_running(db: Path, pid: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Store(db, readonly=True) as store:
                run = store.run(1)
            if run["status"] == "running" and run["pid"] == pid:
                return
        except Exception:  # noqa: BLE001 - the database may not exist yet
            pass
        time.sleep(0.05)
    raise AssertionError("the run never started")


def check_after_kill(db: Path, run_dir: Path, flushed: Path, server: FaultServer, label: str) -> int:
    """Everything requirement 1 promises right after a kill. Returns the newest checkpoint's step."""
    assert integrity(db) == "ok", label
    with Store(db, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "crashed", (label, run["stored_status"])
        assert store.summaries()[0]["status"] == "crashed", label
        have = {(r["step"], r["name"]) for r in store.metrics(1)}
        ckpt_rows = {c["step"] for c in store.checkpoints(1)}
    listing, out = server.run(["runs", "--json", "--db", str(db)])
    assert listing["code"] == 0 and json.loads(out)[0]["status"] == "crashed", (label, out)
    committed = flushed.read_text().splitlines() if flushed.exists() else []
    lost = [line for line in committed if (int(line.split()[1]), line.split()[2]) not in have]
    assert not lost, (label, f"{len(lost)} committed metric rows are gone", lost[:5])
    files = checkpoint_files(run_dir)
    assert files, label
    for path in files:  # a half-written file never carries a real name
        assert load_checkpoint(path)["step"] == step_of(path), (label, path)
    assert ckpt_rows <= {step_of(p) for p in files}, (label, "a checkpoint row without its file", ckpt_rows)
    return step_of(files[-1])


@pytest.mark.slow
def test_kill_nine_at_random_points_loses_nothing(tmp_path, corpus_file):
    seed = kill_seed()
    n_points = int(os.environ.get("MLMLAB_KILL_POINTS", "12"))
    rng = random.Random(seed)
    print(f"kill seed {seed}, {n_points} kill points")
    db = tmp_path / "runs" / "mlmlab.db"
    run_dir = db.parent / "mlmlab" / "run-1"
    sets = sets_args([*TINY_SETS, f"data.source={corpus_file}", *KILL_SETS])
    plan = [("ckpt-row", 2)]
    while len(plan) < n_points:
        kinds = KINDS[:]
        rng.shuffle(kinds)
        plan += [(k, rng.randint(*HITS[k]) if k in HITS else 0) for k in kinds]
    plan = plan[:n_points]
    survived = []
    with FaultServer(tmp_path) as server:
        for i, (kind, hit) in enumerate(plan):
            label = f"kill {i + 1}/{n_points}: {kind} hit {hit} (seed {seed})"
            argv = ["run", "--db", str(db), "--quiet", *sets] if i == 0 else ["run", "--db", str(db), "--quiet", "--resume", "1"]
            before = rows(db) if i else {}
            resume_step = step_of(checkpoint_files(run_dir)[-1]) if i else 0
            pid, out, flushed = server.start(argv, None if kind == "outside" else kind, hit)
            if kind == "outside":
                wait_running(db, pid)
                time.sleep(rng.uniform(0.1, 1.5))
                os.kill(pid, signal.SIGKILL)
            result = server.wait()
            assert result["signal"] == signal.SIGKILL, (label, result, out.read_text()[-2000:])
            if kind not in ("ckpt-write", "ckpt-rename", "outside"):  # only a kill in a write leaves a temp file
                assert not [p for p in run_dir.iterdir() if TEMP_NAME.fullmatch(p.name)], label
            # The resume kept the history up to its checkpoint exactly (rows after it were cut).
            after = rows(db)
            kept = {k: v for k, v in before.items() if v[0] <= resume_step}
            assert all(after.get(k) == v for k, v in kept.items()), (label, "rows before the checkpoint changed")
            newest = check_after_kill(db, run_dir, flushed, server, label)
            survived.append((kind, hit, newest))
        final_steps = step_of(checkpoint_files(run_dir)[-1]) + 3 * CKPT_EVERY
        done, out = server.run(["run", "--db", str(db), "--resume", "1", "--set", f"train.steps={final_steps}"])
        assert done["code"] == 0, out
    print("kill points survived:", len(survived), survived)
    assert integrity(db) == "ok"
    assert not [p for p in run_dir.iterdir() if TEMP_NAME.fullmatch(p.name)]  # stale temp files were swept
    with Store(db, readonly=True) as store:
        run = store.run(1)
        assert (run["status"], run["step"]) == ("completed", final_steps)
        train = [s for s, _ in store.series(1, "train_loss")]
        assert train == list(range(LOG_EVERY, final_steps + 1, LOG_EVERY)), "a gap or a duplicate in the curve"
        evals = [s for s, _ in store.series(1, "eval_loss")]
        assert evals == sorted(set(evals)) and set(range(EVAL_EVERY, final_steps + 1, EVAL_EVERY)) <= set(evals)
        samples = store.db.execute("select step, count(*) from samples where run_id = 1 group by step").fetchall()
        assert all(n == 4 for _, n in samples) and [s for s, _ in samples] == evals
        ckpts = [c["step"] for c in store.checkpoints(1)]
    files = checkpoint_files(run_dir)
    assert ckpts == [step_of(p) for p in files] and len(files) == KEEP
    assert all(CKPT_NAME.fullmatch(p.name) for p in files)
    assert load_checkpoint(files[-1])["step"] == final_steps
