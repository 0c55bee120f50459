"""The heartbeat thread of a training process."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mlmlab.errors import StoreError
from mlmlab.store.liveness import HEARTBEAT_EVERY_S
from mlmlab.store.runs import Store


class Heartbeat:
    """Beats for a training process from a thread of its own, every HEARTBEAT_EVERY_S seconds.

    Metric flushes beat too, but only at log steps: a first step that compiles for minutes, slow
    steps with a large `log_every`, or a long evaluation would otherwise leave a gap longer than
    HEARTBEAT_TIMEOUT_S, and readers on another host would call a live run crashed. The thread
    opens its own connection (a connection must not cross threads) and gives up quietly when the
    database fails: the training thread's own writes report that.
    """

    def __init__(self, path: str | Path, run_id: int, every_s: float = HEARTBEAT_EVERY_S):
        self.path, self.run_id, self.every_s = Path(path), run_id, every_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"mlmlab-heartbeat-{run_id}", daemon=True)

    def start(self) -> "Heartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        pid = os.getpid()
        try:
            store = Store(self.path, busy_timeout_ms=5_000)
        except StoreError:
            return
        with store:
            while not self._stopped.wait(self.every_s):
                try:
                    store.check_same_file()
                    store.beat(self.run_id, pid)
                except StoreError:
                    return
