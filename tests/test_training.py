"""End-to-end runs as a user starts them: real `mlmlab run` subprocesses on real SQLite files."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import mlmlab_cmd, run_cli, sets_args, REPO
from mlmlab.checkpoints import checkpoint_files, load_checkpoint
from mlmlab.store import Store
from store_helpers import metric_names


def test_run_writes_everything_and_learns(trained_run):
    db, run_id = trained_run
    with Store(db, readonly=True) as store:
        run = store.run(run_id)
        assert run["status"] == "completed" and run["step"] == 60 and run["precision"] == "fp32"
        assert run["config"]["model"]["d_model"] == 32 and run["vocab"]["kind"] == "char"
        eval_loss = [v for _, v in store.series(run_id, "eval_loss")]
        assert len(eval_loss) == 3 and eval_loss[-1] < eval_loss[0]
        names = set(metric_names(store, run_id))
        for name in ("train_loss", "train_acc", "eval_loss", "eval_acc", "lr", "grad_norm", "tokens_per_s",
                     "step_ms", "mem_mb", "mask_frac", "mask_mask_frac", "mask_random_frac",
                     "mask_unchanged_frac", "mask_special"):
            assert name in names, name
        assert all(v == 0 for _, v in store.series(run_id, "mask_special"))
        assert all(abs(v - 0.1) < 0.02 for _, v in store.series(run_id, "mask_random_frac"))
        samples = store.samples(run_id)
        assert len(samples) == 4 and samples[0]["step"] == 60
        kinds = {t[3] for t in samples[0]["tokens"]}
        assert "mask" in kinds and "none" in kinds
        ckpts = store.checkpoints(run_id)
        assert [c["step"] for c in ckpts] == [20, 40, 60]
        summary = store.summaries()[0]
        assert summary["status"] == "completed" and summary["best_eval_loss"] <= summary["eval_loss"]
    payload = load_checkpoint(ckpts[-1]["path"])
    assert payload["step"] == 60 and payload["vocab"] == run["vocab"]


def test_runs_json_lists_runs(trained_run):
    db, run_id = trained_run
    result = run_cli("runs", "--json", "--db", str(db))
    rows = json.loads(result.stdout)
    assert rows[0]["id"] == run_id and rows[0]["name"] == "shared" and rows[0]["status"] == "completed"
    table = run_cli("runs", "--db", str(db)).stdout
    assert "shared" in table and "completed" in table


@pytest.mark.slow
def test_resume_continues_from_checkpoint(db_path, tiny_sets):
    first = run_cli("run", "--db", str(db_path), "--quiet", *sets_args(tiny_sets))
    assert first.returncode == 0, first.stderr
    with Store(db_path) as store:
        run = store.run(1)
        # Pretend the run died after logging up to step 40 past its last checkpoint (step 60's file
        # is gone): the rows logged after step 40 must not survive a resume.
        os.remove(checkpoint_files(run["run_dir"])[-1])
        store.update_run(1, status="crashed")
    refused = run_cli("run", "--db", str(db_path), "--resume", "1", "--set", "model.d_model=64")
    assert refused.returncode == 2 and "cannot change model.d_model" in refused.stderr
    resumed = run_cli("run", "--db", str(db_path), "--quiet", "--resume", "1", "--set", "train.steps=60")
    assert resumed.returncode == 0, resumed.stderr
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "completed" and run["step"] == 60 and run["total_steps"] == 60
        steps = [s for s, _ in store.series(1, "train_loss")]
        assert steps == sorted(set(steps)) == list(range(5, 61, 5))  # no gap, no duplicates
        assert [c["step"] for c in store.checkpoints(1)] == [20, 40, 60]
        assert [s for s, _ in store.series(1, "eval_loss")] == [20, 40, 60]
        elapsed = [x for x, _ in store.series(1, "train_loss", x="elapsed")]
        assert elapsed == sorted(elapsed)  # the time axis joins up too
        tokens = [x for x, _ in store.series(1, "train_loss", x="tokens")]
        assert tokens[-1] == 60 * 16 * 32


@pytest.mark.slow
def test_resume_refuses_finished_run_without_more_steps(db_path, tiny_sets):
    assert run_cli("run", "--db", str(db_path), "--quiet", *sets_args(tiny_sets + ["train.steps=20"])).returncode == 0
    again = run_cli("run", "--db", str(db_path), "--resume", "1")
    assert again.returncode == 2 and "already reached step 20" in again.stderr
    nothing = run_cli("run", "--db", str(db_path), "--resume", "7")
    assert nothing.returncode == 2 and "run 7 not found" in nothing.stderr


def start_run(db_path, sets, *extra):
    return subprocess.Popen(mlmlab_cmd("run", "--db", str(db_path), *sets_args(sets), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def wait_for(predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def running_step(db_path):
    if not db_path.exists():
        return 0
    try:
        with Store(db_path, readonly=True) as store:
            runs = store.runs()
    except Exception:
        return 0
    return runs and runs[0]["status"] == "running" and runs[0]["step"] >= 10 and runs[0]["step"]


@pytest.mark.slow
def test_sigterm_stops_with_checkpoint(db_path, tiny_sets):
    proc = start_run(db_path, tiny_sets + ["train.steps=100000", "train.checkpoint_every=100000"])
    wait_for(lambda: running_step(db_path))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "stopped"
        ckpt = store.checkpoints(1)[-1]
    assert load_checkpoint(ckpt["path"])["step"] == run["step"] > 0


@pytest.mark.slow
def test_reader_reads_while_run_writes(db_path, tiny_sets):
    proc = start_run(db_path, tiny_sets + ["train.steps=100000", "train.max_minutes=2"], "--quiet")
    wait_for(lambda: running_step(db_path))
    seen, errors = [], []
    deadline = time.monotonic() + 60  # metrics are flushed every few seconds; a loaded machine is slower
    while proc.poll() is None and time.monotonic() < deadline and (len(seen) < 10 or seen[-1] == seen[0]):
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            seen.append(conn.execute("select count(*) from metrics").fetchone()[0])
            conn.close()
        except sqlite3.Error as exc:  # pragma: no cover - the failure this test exists to catch
            errors.append(exc)
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert not errors
    assert seen[-1] > seen[0]  # the reader saw rows arrive while the run was writing


@pytest.mark.slow
def test_max_minutes_ends_run_completed(db_path, tiny_sets):
    result = run_cli("run", "--db", str(db_path), "--quiet", *sets_args(tiny_sets + ["train.steps=1000000", "train.max_minutes=0.05"]))
    assert result.returncode == 0, result.stderr
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
    assert run["status"] == "completed" and 0 < run["step"] < 1000000
    assert load_checkpoint(checkpoint_files(run["run_dir"])[-1])["step"] == run["step"]


@pytest.mark.slow
def test_plain_log_lines_when_not_a_terminal(db_path, tiny_sets):
    result = run_cli("run", "--db", str(db_path), *sets_args(tiny_sets + ["train.steps=20"]))
    assert result.returncode == 0
    assert "step 20/20" in result.stderr and "tok/s" in result.stderr and "run 1 completed" in result.stderr


@pytest.mark.parametrize("schedule", ["noam", "constant", "cosine"])
def test_schedules(schedule):
    from mlmlab.config import load_config
    from mlmlab.engine.schedule import lr_at

    cfg = load_config(None, [f"train.schedule={schedule}", "train.warmup_steps=10", "train.steps=100", "train.lr=1.0"])
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] < lrs[9]  # warm-up rises
    assert max(lrs) == pytest.approx(lrs[9], rel=0.15)
    if schedule == "cosine":
        assert lrs[-1] == pytest.approx(0.1, abs=0.01)


@pytest.mark.slow
def test_short_sequence_warmup(db_path, tiny_sets):
    sets = tiny_sets + ["train.steps=20", "train.short_seq_len=8", "train.short_seq_steps=10"]
    result = run_cli("run", "--db", str(db_path), "--quiet", *sets_args(sets))
    assert result.returncode == 0, result.stderr
    with Store(db_path, readonly=True) as store:
        tokens = dict(store.series(1, "train_loss", x="step"))
        run = store.run(1)
        by_step = {s: t for s, t in zip([s for s, _ in store.series(1, "lr")], [t for t, _ in store.series(1, "lr", x="tokens")])}
    assert run["tokens"] == 10 * 16 * 8 + 10 * 16 * 32
    assert by_step[10] == 10 * 16 * 8 and by_step[20] == run["tokens"]
    assert len(tokens) == 4


def test_short_length_not_below_seq_len_means_no_warmup():
    from mlmlab.config import load_config
    from mlmlab.engine.schedule import seq_len_at

    cfg = load_config(None, ["train.seq_len=32", "train.short_seq_len=32", "train.short_seq_steps=10"])
    assert seq_len_at(0, cfg) == 32
    assert seq_len_at(0, load_config()) == load_config().train.short_seq_len < load_config().train.seq_len
