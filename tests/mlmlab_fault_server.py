"""A fork server for the kill tests: pay for `import torch` once, then run many `mlmlab` commands.

Reads one JSON request per line on stdin and runs `mlmlab.cli.main(argv)` in a forked child, with
stdout and stderr going to the request's `out` file (a `batch` of requests runs concurrently). A request may name a `fault`: the child then
SIGKILLs itself at the `hit`-th time it reaches that point (see FAULTS). Replies, one JSON line
each: {"pid": P} when the child starts (so the test can kill it from outside too), then
{"pid": P, "code": C, "signal": S} once it has ended and been reaped.

Every child also appends one line per metric row to the request's `flushed` file as soon as
`Store.add_metrics` has committed it (unbuffered `os.write`, so a kill cannot lose the line): the
test checks that each of these rows is still in the database after the kill.

The file name holds "mlmlab" on purpose: `pid_alive` only trusts processes whose command line
names mlmlab, and the children inherit this command line.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")

import sqlite_utils.db  # noqa: E402
import torch  # noqa: E402  (imported, but no tensor op runs here before a fork)

import mlmlab.checkpoints  # noqa: E402
import mlmlab.cli  # noqa: E402
import mlmlab.launcher  # noqa: E402
import mlmlab.model  # noqa: E402
import mlmlab.store  # noqa: E402
import mlmlab.engine.trainer  # noqa: E402

FAULTS = {
    "step": "in a training step, after the forward pass, before backward and the optimizer",
    "flush": "in a metric flush, after the INSERT, before COMMIT",
    "flushed": "right after a metric flush committed",
    "samples": "in an evaluation, before its samples are written",
    "ckpt-write": "in a checkpoint write, half the bytes in the temporary file",
    "ckpt-rename": "in a checkpoint write, temporary file complete and synced, before the rename",
    "ckpt-row": "after a checkpoint file is in place, before its row is added",
    "prune": "in pruning, after an old checkpoint's row is removed, before its file is",
    "resume-start": "after --resume claimed the run and cut its history, before training starts",
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str | None, hit: int, flushed: str | None) -> None:
    seen = {"n": 0}

    def now() -> bool:
        seen["n"] += 1
        return seen["n"] == hit

    store = mlmlab.store.Store
    original_add_metrics = store.add_metrics

    def add_metrics(self, rows, heartbeat=None):
        original_add_metrics(self, rows, heartbeat)
        if flushed and rows:
            fd = os.open(flushed, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, "".join(f"{r['run_id']} {r['step']} {r['name']}\n" for r in rows).encode())
            os.close(fd)
        if fault == "flushed" and now():
            die()

    store.add_metrics = add_metrics
    if fault == "step":
        forward = mlmlab.model.MaskedLM.forward

        def step_forward(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            if self.training and now():
                die()
            return out

        mlmlab.model.MaskedLM.forward = step_forward
    elif fault == "flush":
        insert_all = sqlite_utils.db.Table.insert_all

        def flush_insert_all(self, records, *args, **kwargs):
            result = insert_all(self, records, *args, **kwargs)
            if self.name == "metrics" and now():
                die()
            return result

        sqlite_utils.db.Table.insert_all = flush_insert_all
    elif fault == "samples":
        add_samples = store.add_samples

        def samples_then_die(self, rows):
            if now():
                die()
            return add_samples(self, rows)

        store.add_samples = samples_then_die
    elif fault == "ckpt-write":
        save = torch.save

        def half_save(obj, f, *args, **kwargs):
            if not now():
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            die()

        mlmlab.checkpoints.torch.save = half_save
    elif fault == "ckpt-rename":
        replace = os.replace

        def replace_then(src, dst, *args, **kwargs):
            if str(dst).endswith(".pt") and now():
                die()
            return replace(src, dst, *args, **kwargs)

        mlmlab.checkpoints.os.replace = replace_then
    elif fault == "ckpt-row":
        add_checkpoint = store.add_checkpoint

        def row_then(self, row):
            if now():
                die()
            return add_checkpoint(self, row)

        store.add_checkpoint = row_then
    elif fault == "prune":
        remove_checkpoint = store.remove_checkpoint

        def remove_then(self, run_id, step):
            remove_checkpoint(self, run_id, step)
            if now():
                die()

        store.remove_checkpoint = remove_then
    elif fault == "resume-start":
        run = mlmlab.engine.trainer.Trainer.run

        def run_then(self):
            if self.resume_from is not None and now():
                die()
            return run(self)

        mlmlab.engine.trainer.Trainer.run = run_then
    elif fault not in (None, "flushed"):
        raise ValueError(f"unknown fault {fault!r}")


def child(request: dict) -> None:
    fd = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
    code = 99
    try:
        torch.set_num_threads(1)
        install(request.get("fault"), request.get("hit", 1), request.get("flushed"))
        code = mlmlab.cli.main(request["argv"])
    except BaseException:  # noqa: BLE001 - a traceback is the finding; report it through the exit code
        traceback.print_exc()
    finally:
        os._exit(code if isinstance(code, int) else 98)


def main() -> None:
    """One request: fork, reply with the pid, reap, reply with the outcome. A request with a
    `batch` list starts all of them at once (concurrent runs) and replies for each in order."""
    for line in sys.stdin:
        request = json.loads(line)
        batch = request.get("batch", [request])
        pids = []
        for one in batch:
            pid = os.fork()
            if pid == 0:
                child(one)
            pids.append(pid)
        for pid in pids:
            print(json.dumps({"pid": pid}), flush=True)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            print(json.dumps({"pid": pid, "code": code, "signal": sig}), flush=True)


if __name__ == "__main__":
    main()
