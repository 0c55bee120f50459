"""Operations on a run: start, resume, stop, delete. The CLI and the app both call these.

Each operation returns what happened; the caller words it (the CLI prints a line, the app a
notification), so the two keep their own texts over one behaviour. Problems the user can fix
(an unknown run, a broken database) arrive as the store's and the launcher's `MlmlabError`s.

No torch at import: the app imports this to stop and delete runs, and training modules load only
inside `new_run` and `resume_run`, which train in this process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmlab.paths import require_db_folder
from mlmlab.store import BUSY_TIMEOUT_MS, Store, signal_stop
from mlmlab.vocab import ACTIVE, RUNNING

# Why a run cannot resume (see `resume_problem`).
STILL_ACTIVE, FOLDER_GONE, NO_CHECKPOINT = "active", "folder gone", "no checkpoint"

QUEUED_POLL_S = 0.25


def new_run(db_path: Path, config: str | None, sets: list[str], **options: Any) -> tuple[int | None, str]:
    """Validate a config, create its run and train it in this process. Returns (run id, final status).

    `options` are `mlmlab.launcher.new_run`'s (name, device, reporter, id_file).
    """
    from mlmlab.launcher import new_run as train_new_run

    return train_new_run(db_path, config, sets, **options)


def resume_run(db_path: Path, ref: str, sets: list[str], **options: Any) -> tuple[int, str]:
    """Continue run `ref` (id or name) from its latest checkpoint, in this process. Returns (run id, final status).

    `options` are `mlmlab.launcher.resume_run`'s (device, reporter, id_file).
    """
    from mlmlab.launcher import resume_run as train_resume_run

    return train_resume_run(db_path, ref, sets, **options)


def resume_problem(run: dict[str, Any]) -> str | None:
    """STILL_ACTIVE, FOLDER_GONE or NO_CHECKPOINT when `run` cannot resume, None when it can.

    `run` is a row with its effective status and `checkpoint_step` (None without a checkpoint).
    """
    if run["status"] in ACTIVE:
        return STILL_ACTIVE
    if not Path(run["run_dir"]).is_dir():
        return FOLDER_GONE
    if run["checkpoint_step"] is None:
        return NO_CHECKPOINT
    return None


@dataclass(frozen=True)
class StopOutcome:
    run: dict[str, Any]  # the row as it read when the stop was decided
    asked: bool  # the stop flag is set: the run checkpoints and ends `stopped`
    signalled: bool = False  # its process is on this host and got SIGTERM (else it sees the flag at its next flush)

    @property
    def status(self) -> str:
        return self.run["status"]


def stop_run(db_path: Path, ref: str | int, *, wait_while_queued_s: float | None = None,
             busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> StopOutcome:
    """Ask run `ref` (id or name) to checkpoint and stop.

    A run that is not active is left alone (`asked` False). A queued run has no signal handler yet
    and `start_run` clears the stop flag, so with `wait_while_queued_s` the stop waits up to that
    long for it to be running, and gives up (`asked` False, status queued) after; without it a
    queued run is asked at once.
    """
    require_db_folder(db_path)  # a run to stop is in a database that exists: never create its folder
    deadline = time.monotonic() + (wait_while_queued_s or 0.0)
    with Store(db_path, busy_timeout_ms=busy_timeout_ms) as store:
        while True:
            run = store.find_run(ref)
            if run["status"] not in ACTIVE:
                return StopOutcome(run, asked=False)
            if run["status"] == RUNNING or wait_while_queued_s is None:
                break
            if time.monotonic() > deadline:
                return StopOutcome(run, asked=False)
            time.sleep(QUEUED_POLL_S)
        store.request_stop(run["id"])
    return StopOutcome(run, asked=True, signalled=signal_stop(run))


def delete_run(db_path: Path, run_id: int, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
    """Delete a run's rows and its folder (the store refuses while it is active)."""
    require_db_folder(db_path)
    with Store(db_path, busy_timeout_ms=busy_timeout_ms) as store:
        store.delete_run(run_id)
