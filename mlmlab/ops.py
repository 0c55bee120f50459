"""Operations on an existing run: stop, delete, and whether it can resume. The CLI and the app both call these.

Each operation returns what happened; the caller words it (the CLI prints a line, the app a
notification), so the two keep their own texts over one behaviour. Problems the user can fix
(an unknown run, a broken database) arrive as the store's and the launcher's `MlmlabError`s.

No torch: the app imports this to stop and delete runs. Starting and resuming a run is
`mlmlab.launcher`'s (`mlmlab run`, which the app launches as a process of its own).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlmlab.store import BUSY_TIMEOUT_MS, Store, signal_stop
from mlmlab.vocab import ACTIVE, RUNNING

# Why a run cannot resume (see `resume_problem`).
STILL_ACTIVE, FOLDER_GONE, NO_CHECKPOINT = "active", "folder gone", "no checkpoint"

QUEUED_POLL_S = 0.25


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
    deadline = time.monotonic() + (wait_while_queued_s or 0.0)
    # must_exist: the run to stop is in a database that is there; a typo creates nothing
    with Store(db_path, busy_timeout_ms=busy_timeout_ms, must_exist=True) as store:
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
    with Store(db_path, busy_timeout_ms=busy_timeout_ms, must_exist=True) as store:
        store.delete_run(run_id)
