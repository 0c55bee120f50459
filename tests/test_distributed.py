"""Training under torchrun (issue 14): real `torchrun --standalone --nproc-per-node 2 -m mlmlab run`
processes on the CPU (gloo), a real SQLite database, tiny models.

What is checked: a 2-process run completes with one run row written by rank 0 only (world size,
global batch and both ranks recorded), tokens counted over both ranks and the eval loss falling;
its checkpoint (plain names, no `module.`) resumes in one process and under torchrun; a rank that
raises ends the run `failed` with that rank's text within seconds; SIGTERM to torchrun stops both
ranks with one checkpoint (`stopped`); a killed rank leaves the run `crashed` and resumable; and
1 process x grad_accum_steps 2 makes the same weights as 2 processes x 1 (fp32 tolerance), checked
in-process against a gloo group of 2 spawned processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY_SETS, sets_args
from test_training import running_step, wait_for
from mlmlab.checkpoints import load_checkpoint
from mlmlab.store import Store, migrations
from mlmlab.store.schema import SCHEMA_VERSION

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
DDP_SETS = ["train.steps=30", "train.eval_every=15", "train.checkpoint_every=15", "train.batch_size=8"]
# A fault script run by torchrun in place of `-m mlmlab`: the name holds "mlmlab" because the store's
# liveness check only trusts processes whose command line names mlmlab.
FAULT_SCRIPT = '''
import os, sys, time
import mlmlab.cli, mlmlab.model

if os.environ["RANK"] == "1":
    forward, calls = mlmlab.model.MaskedLM.forward, [0]

    def failing_forward(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] == int(os.environ["FAULT_AT"]):
                open(os.environ["FAULT_TIME"], "w").write(repr(time.time()))
                if os.environ["FAULT"] == "kill":
                    os.kill(os.getpid(), 9)
                raise ValueError("injected fault on rank 1")
        return forward(self, *args, **kwargs)

    mlmlab.model.MaskedLM.forward = failing_forward
sys.exit(mlmlab.cli.main(sys.argv[1:]))
'''


def torchrun(db: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, "-m", "mlmlab", "run", "--db", str(db), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})


def single(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlmlab", "run", "--db", str(db), *args], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def metric_rows(db: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = conn.execute("select step, name, value, tokens from metrics where run_id = 1 order by id").fetchall()
    conn.close()
    return rows


@pytest.fixture
def ddp_sets(tiny_sets) -> list[str]:
    return [*tiny_sets, *DDP_SETS]


@pytest.mark.slow
def test_a_two_process_run_completes_and_its_checkpoint_resumes_anywhere(db_path, ddp_sets):
    done = torchrun(db_path, *sets_args(ddp_sets))
    assert done.returncode == 0, done.stderr[-3000:]
    with Store(db_path, readonly=True) as store:
        runs = store.runs()
        assert len(runs) == 1  # rank 1 created nothing
        run = runs[0]
        assert (run["status"], run["step"], run["world_size"], run["global_batch"]) == ("completed", 30, 2, 16)
        assert [r["rank"] for r in run["ranks"]] == [0, 1] and len({r["pid"] for r in run["ranks"]}) == 2
        assert all(r["device"] == "cpu" and r["host"] for r in run["ranks"])
        assert run["tokens"] == 30 * 8 * 32 * 2  # both ranks' tokens
        eval_loss = [v for _, v in store.series(1, "eval_loss")]
        ckpt = load_checkpoint(store.checkpoints(1)[-1]["path"])
    rows = metric_rows(db_path)
    assert len({(step, name) for step, name, _, _ in rows}) == len(rows)  # one writer: no figure twice
    # Rank 0 says what it wrote, once; rank 1 reports nothing.
    assert done.stderr.count("logged ") == 1 and f"logged {len(rows)} metric rows" in done.stderr
    assert eval_loss[-1] < eval_loss[0]
    assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]
    assert (ckpt["step"], ckpt["tokens"]) == (30, 30 * 8 * 32 * 2)

    # One process accumulating 2 micro-batches keeps the global batch of 2 processes x 1.
    alone = single(db_path, "--quiet", "--resume", "1", "--set", "train.steps=40", "--set", "train.grad_accum_steps=2")
    assert alone.returncode == 0, alone.stderr[-3000:]
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        assert (run["status"], run["step"], run["world_size"], run["ranks"]) == ("completed", 40, 1, None)
        assert run["global_batch"] == 16 and run["tokens"] == 40 * 8 * 32 * 2

    again = torchrun(db_path, "--quiet", "--resume", "1", "--set", "train.steps=50", "--set", "train.grad_accum_steps=1")
    assert again.returncode == 0, again.stderr[-3000:]
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        assert (run["status"], run["step"], run["world_size"]) == ("completed", 50, 2)
        steps = [s for s, _ in store.series(1, "train_loss")]
    assert steps == sorted(set(steps)) == list(range(5, 51, 5))  # no gap, no duplicate across three world sizes


def run_fault(tmp_path: Path, db: Path, sets: list[str], fault: str) -> tuple[subprocess.CompletedProcess, float]:
    script = tmp_path / "mlmlab_ddp_fault.py"
    script.write_text(FAULT_SCRIPT, encoding="utf-8")
    fault_time = tmp_path / "fault-time"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault, "FAULT_AT": "12", "FAULT_TIME": str(fault_time)}
    done = subprocess.run([*TORCHRUN, str(script), "run", "--db", str(db), "--quiet", *sets_args(sets)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    return done, float(fault_time.read_text())


@pytest.mark.slow
def test_a_rank_that_raises_fails_the_run_with_its_message(tmp_path, db_path, ddp_sets):
    done, raised_at = run_fault(tmp_path, db_path, [*ddp_sets, "train.steps=1000"], "raise")
    assert done.returncode != 0
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
    assert run["status"] == "failed", run["error"]
    assert "rank 1" in run["error"] and "ValueError: injected fault on rank 1" in run["error"]
    assert run["ended_at"] - raised_at < 30


@pytest.mark.slow
def test_a_killed_rank_leaves_the_run_crashed_and_resumable(tmp_path, db_path, ddp_sets):
    done, killed_at = run_fault(tmp_path, db_path, [*ddp_sets, "train.steps=1000", "train.checkpoint_every=1000"], "kill")
    assert done.returncode != 0
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        ckpts = store.checkpoints(1)
    assert run["status"] == "crashed" and "another rank stopped answering" in run["error"], run["error"]
    assert run["ended_at"] - killed_at < 30
    assert not ckpts and "saved a checkpoint at step" in run["error"]  # the rescue file, found by --resume
    resumed = single(db_path, "--quiet", "--resume", "1", "--set", f"train.steps={run['step'] + 5}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with Store(db_path, readonly=True) as store:
        assert store.run(1)["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigterm to torchrun", "mlmlab stop"])
def test_a_stop_ends_both_ranks_with_one_checkpoint(db_path, ddp_sets, how):
    sets = [*ddp_sets, "train.steps=100000", "train.checkpoint_every=100000"]
    proc = subprocess.Popen([*TORCHRUN, "-m", "mlmlab", "run", "--db", str(db_path), "--quiet", *sets_args(sets)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: running_step(db_path))
        asked = time.monotonic()
        if how == "mlmlab stop":
            stop = subprocess.run([sys.executable, "-m", "mlmlab", "stop", "1", "--db", str(db_path)],
                                  capture_output=True, text=True, timeout=60, cwd=REPO)
            assert stop.returncode == 0, stop.stderr
        else:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - asked < 25  # well inside torchrun's 30 s before SIGKILL
    finally:
        proc.kill()
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
        ckpts = store.checkpoints(1)
    assert run["status"] == "stopped", (run["error"], err[-3000:])
    assert len(ckpts) == 1 and load_checkpoint(ckpts[0]["path"])["step"] == run["step"]


# Gradient accumulation ---------------------------------------------------------------------------

ACCUM_SETS = [*TINY_SETS, "model.dropout=0", "train.batch_size=4", "train.warmup_steps=0", "train.lr=1e-3"]
ACCUM_STEPS = 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trained_weights(sets: list[str], rank: int = 0, world_size: int = 1, all_reduces: list | None = None):
    """The weights after ACCUM_STEPS optimizer steps of the real step runner; under DDP each gradient
    bucket all-reduce is appended to `all_reduces`."""
    import torch

    from mlmlab.config import load_config
    from mlmlab.engine.data import no_mask_ids, prepare_data
    from mlmlab.engine.state import build_state

    torch.set_num_threads(1)
    cfg = load_config(None, sets)
    data = prepare_data(cfg, on_message=lambda text: None)
    device = torch.device("cpu")
    wrap = None
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        wrap = DistributedDataParallel
    state = build_state(cfg, device, "fp32", data.train_ids, data.tokenizer.vocab_size,
                        no_mask_ids(data.tokenizer, cfg, device), rank=rank, world_size=world_size, wrap=wrap)
    if all_reduces is not None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        def counted(group, bucket):
            all_reduces.append(bucket.index())
            return allreduce_hook(group, bucket)

        state.runner.ddp.register_comm_hook(None, counted)
    for step in range(ACCUM_STEPS):
        state.runner.step(step)
    return {name: value.detach().clone() for name, value in state.model.state_dict().items()}


def _ddp_worker(rank: int, port: int, sets: list[str], out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        weights = _trained_weights(sets, rank, 2)
        # no_sync: accumulating 3 micro-batches all-reduces each bucket once per optimizer step, as 1 does.
        once, thrice = [], []
        _trained_weights(sets, rank, 2, once)
        _trained_weights([*sets, "train.grad_accum_steps=3"], rank, 2, thrice)
        if rank == 0:
            torch.save({"weights": weights, "all_reduces": [once, thrice]}, out)
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_make_the_weights_of_one_process_accumulating_two(tmp_path, corpus_file):
    import torch
    import torch.multiprocessing as mp

    sets = [*ACCUM_SETS, f"data.source={corpus_file}"]
    alone = _trained_weights([*sets, "train.grad_accum_steps=2"])  # also builds the token cache the workers reuse
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(_free_port(), [*sets, "train.grad_accum_steps=1"], str(out)), nprocs=2)
    saved = torch.load(out, weights_only=True)
    ddp, (once, thrice) = saved["weights"], saved["all_reduces"]
    assert once and thrice == once and len(once) % ACCUM_STEPS == 0
    assert ddp.keys() == alone.keys()
    for name in alone:
        torch.testing.assert_close(ddp[name], alone[name], rtol=1e-5, atol=1e-6, msg=name)
    # And it is not trivially so: accumulating 1 instead of 2 micro-batches gives other weights.
    single = _trained_weights([*sets, "train.grad_accum_steps=1"])
    assert any(not torch.allclose(single[name], alone[name], atol=1e-6) for name in alone)


def _watch_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mlmlab.engine import distributed

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:
            distributed.publish_failure(1, "rank 1 (here): ValueError: boom")
        else:
            seen: list[str] = []
            watch = distributed.PeerWatch(2, seen.append, every_s=0.05).start()
            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:  # the training thread is busy elsewhere
                time.sleep(0.05)
            watch.stop()
            Path(out).write_text(json.dumps(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_rank_0_hears_of_a_peer_failure_without_a_collective(tmp_path):
    """On NCCL rank 0 may wait in a device sync until torchrun kills it: its watch thread reads the text."""
    import torch.multiprocessing as mp

    out = tmp_path / "seen.json"
    mp.spawn(_watch_worker, args=(_free_port(), str(out)), nprocs=2)
    assert json.loads(out.read_text()) == ["rank 1 (here): ValueError: boom"]


# The schema -----------------------------------------------------------------------------------------

def test_schema_3_adds_world_size_global_batch_and_ranks_and_old_databases_load(tmp_path):
    from sqlite_utils import Database

    old = tmp_path / "v2.db"
    db = Database(old)
    migrations.apply(db, stop_before="m003_world_size")
    db.execute("PRAGMA user_version = 2")
    db["runs"].insert({"name": "old", "status": "completed", "config": "{}", "run_dir": "", "created_at": 1.0,
                       "total_steps": 10})
    db.conn.commit()
    db.close()
    with Store(old, readonly=True) as store:  # a reader does not migrate, and reads the old row
        assert "world_size" not in store.run(1) and "world_size" not in store.run_lean(1)
    with Store(old) as store:  # a writer migrates
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        run = store.run(1)
        assert (run["world_size"], run["global_batch"], run["ranks"]) == (1, None, None)
        ranks = [{"rank": 0, "local_rank": 0, "host": "a", "device": "cuda:0", "pid": 1},
                 {"rank": 1, "local_rank": 0, "host": "b", "device": "cuda:0", "pid": 2}]
        store.start_run(1, device="cuda:0", precision="bf16", n_params=5, world_size=2, global_batch=64, ranks=ranks)
        assert store.run(1)["ranks"] == ranks == store.run_lean(1)["ranks"]
        assert store.run_lean(1)["world_size"] == 2 and store.run(1)["global_batch"] == 64
        assert json.loads(store.db.execute("select ranks from runs").fetchone()[0]) == ranks


def test_grad_accum_steps_is_validated_in_one_line():
    from mlmlab.config import load_config
    from mlmlab.errors import ConfigError

    assert load_config(None, ["train.grad_accum_steps=4"]).train.grad_accum_steps == 4
    with pytest.raises(ConfigError, match=r"^train.grad_accum_steps = 0: .*greater than or equal to 1"):
        load_config(None, ["train.grad_accum_steps=0"])


def test_micro_batch_seeds_depend_on_step_and_index_only():
    from mlmlab.engine.distributed import micro_seed

    seeds = {micro_seed(0, step, index, stream) for step in range(50) for index in range(8) for stream in (0, 1)}
    assert len(seeds) == 50 * 8 * 2 and all(0 <= s < 2**63 for s in seeds)
    assert micro_seed(3, 7, 1, 0) == micro_seed(3, 7, 1, 0) != micro_seed(4, 7, 1, 0)


# The app ----------------------------------------------------------------------------------------------

async def test_the_form_offers_processes_and_hands_them_to_the_launch(db_path, monkeypatch):
    from textual.widgets import Input, Static
    from tui_helpers import build_app, wait_for, wait_for_screen

    from mlmlab.tui.screens.form import NewRunScreen

    app = build_app(db_path)
    launched = []
    monkeypatch.setattr(app, "start_new_run", lambda *a, **k: launched.append(k))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("n")
        form = await wait_for_screen(pilot, app, NewRunScreen)
        await wait_for(pilot, lambda: form.config is not None, 5, "the preset to validate")
        verdict = lambda: str(form.query_one("#form-error", Static).content)  # noqa: E731
        processes = form.query_one("#processes", Input)
        processes.value = "two"
        await pilot.pause()
        assert verdict() == "processes = 'two': must be a whole number (1 = no torchrun)"
        assert processes.has_class("-invalid")
        app.devices = [{"id": "cuda:0", "label": "cuda:0"}, {"id": "cpu", "label": "cpu"}]  # one GPU: one process
        processes.value = "2"
        await pilot.pause()
        assert verdict() == "processes = 2: must be between 1 and 1 (one per GPU: 1 found)"
        app.devices = [{"id": "cpu", "label": "cpu"}]  # on the CPU: gloo, to try it
        await pilot.pause()
        assert form.config is not None, verdict()
        await pilot.press("ctrl+l")
        assert launched == [{"processes": 2}]


@pytest.mark.slow
def test_a_launch_of_two_processes_goes_through_torchrun(db_path, ddp_sets):
    from mlmlab.config import load_config, to_toml
    from mlmlab.tui.launch import launch_new

    launch = launch_new(db_path, to_toml(load_config(None, [*ddp_sets, "train.steps=10"])), "pair", cwd=REPO,
                        processes=2)
    assert launch.process.wait(timeout=120) == 0, launch.log_path.read_text()[-3000:]
    assert launch.log_path.read_text().startswith("$ torchrun --standalone --nproc-per-node 2 -m mlmlab run ")
    with Store(db_path, readonly=True) as store:
        run = store.run(1)
    assert (run["status"], run["world_size"], run["name"]) == ("completed", 2, "pair")
