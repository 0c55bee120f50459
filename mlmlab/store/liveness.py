"""Whether a run's process is alive, and the one rule that turns that into the status readers see.

The stored status says what the run last wrote; a process that was killed writes nothing. So an
active run reads as crashed once its process is gone: on this host the process table says so at
once, elsewhere a heartbeat older than HEARTBEAT_TIMEOUT_S does. The SQL view `run_summary`
applies the heartbeat half of the rule with the same constant (see schema.py).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from mlmlab.vocab import ACTIVE, CRASHED

HEARTBEAT_TIMEOUT_S = 120.0  # a run on another host that has not beaten for this long reads as crashed
HEARTBEAT_EVERY_S = 20.0  # how often a training process beats, whatever its steps are doing


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int | None) -> bool:
    """Whether `pid` is a live mlmlab process on this host (guards against pid reuse via cmdline)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust kill(0)
    if b"mlmlab" not in cmdline and b"torchrun" not in cmdline:
        return False
    try:  # a zombie has exited; its parent has just not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def signal_stop(run: dict[str, Any]) -> bool:
    """SIGTERM a run's process when it lives on this host: it finishes the step, checkpoints, ends `stopped`.

    Pair it with `Store.request_stop`, which also reaches runs on other hosts at their next flush.
    Returns whether a signal was sent.
    """
    if run.get("host") != this_host() or not pid_alive(run.get("pid")):
        return False
    try:
        os.kill(run["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def effective_status(row: dict[str, Any], now: float | None = None) -> str:
    """The stored status of a `runs` row, except that an active run whose process is gone reads as crashed.

    The store applies this to every run row it returns; callers read `row["status"]`.
    """
    status = row["status"]
    if status not in ACTIVE:
        return status
    now = time.time() if now is None else now
    if row.get("host") == this_host() and row.get("pid"):
        # On this host the process table is the truth: a live run may be slow to beat (a long
        # evaluation or checkpoint), a dead one is crashed at once.
        return status if pid_alive(row["pid"]) else CRASHED
    beat = row.get("heartbeat_at") or row.get("created_at") or now
    return CRASHED if now - beat > HEARTBEAT_TIMEOUT_S else status
