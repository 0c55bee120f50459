"""The rank-0 writer: everything a training run writes to the store, in the order a kill can survive.

Metric rows are batched and written with the heartbeat every FLUSH_SECONDS (or at once when a
checkpoint or the end needs them committed); samples, checkpoint rows and the run's start and
finish go straight through. The counts of what this process wrote are reported when it ends, so a
test, or a person, can check the database holds exactly that.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from mlmlab.engine.state import Progress
from mlmlab.errors import MlmlabError
from mlmlab.store import Heartbeat, Store
from mlmlab.vocab import ACTIVE, FAILED

FLUSH_SECONDS = 3.0


class Recorder:
    def __init__(self, store: Store, run_id: int):
        self.store, self.run_id = store, run_id
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._heartbeat: Heartbeat | None = None
        self.rows_logged = self.samples_logged = self.checkpoints_written = 0

    def start(self, device: str, precision: str, n_params: int, *, world_size: int = 1,
              global_batch: int | None = None, ranks: list[dict] | None = None) -> None:
        """Mark the run running, with how many processes train it, the sequences per optimizer step
        over all of them and each rank's host and device; keep its heartbeat going from a thread."""
        self.store.start_run(self.run_id, device=device, precision=precision, n_params=n_params,
                             world_size=world_size, global_batch=global_batch, ranks=ranks)
        self._heartbeat = Heartbeat(self.store.path, self.run_id).start()

    def add_rows(self, progress: Progress, stats: dict[str, float]) -> None:
        """Queue one metric row per figure; non-finite values are stored as NULL."""
        now = time.time()
        for name, value in stats.items():
            self._pending.append({
                "run_id": self.run_id, "step": progress.step, "tokens": progress.tokens,
                "elapsed": round(progress.elapsed, 3), "time": now, "name": name,
                "value": value if math.isfinite(value) else None,
            })

    def flush(self, progress: Progress, force: bool = False) -> bool:
        """Write pending metric rows and the heartbeat in one transaction, every few seconds.

        Returns whether it wrote (then the caller may ask `stop_requested`)."""
        if not force and time.monotonic() - self._last_flush < FLUSH_SECONDS:
            return False
        beat = {"run_id": self.run_id, "step": progress.step, "tokens": progress.tokens, "elapsed": progress.elapsed}
        self.store.add_metrics(self._pending, heartbeat=beat)
        self.rows_logged += len(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()
        return True

    def stop_requested(self) -> bool:
        """Whether the app asked this run to stop (works across hosts, unlike a signal)."""
        return self.store.stop_requested(self.run_id)

    def add_samples(self, progress: Progress, rows: list[dict]) -> None:
        self.store.add_samples([{"run_id": self.run_id, "step": progress.step, **row} for row in rows])
        self.samples_logged += len(rows)

    def drop_missing_checkpoints(self) -> None:
        self.store.drop_missing_checkpoints(self.run_id)

    def add_checkpoint(self, progress: Progress, path: Path, size: int, last_eval: dict[str, float]) -> None:
        self.checkpoints_written += 1  # the file is written: it counts even if its row cannot be
        self.store.add_checkpoint({
            "run_id": self.run_id, "step": progress.step, "path": str(path), "bytes": size,
            "tokens": progress.tokens, "created_at": time.time(),
            "eval_loss": last_eval.get("eval_loss"), "eval_acc": last_eval.get("eval_acc"),
        })

    def remove_checkpoint(self, step: int) -> None:
        self.store.remove_checkpoint(self.run_id, step)

    def stop_heartbeat(self) -> None:
        if self._heartbeat:
            self._heartbeat.stop()

    def peer_failed(self, error: str) -> None:
        """Record the run `failed` with another rank's error, from the peer watch's thread (so on a
        connection of its own), unless the run has ended already. Best effort: the training thread
        records it too when its collective fails, if it lives that long."""
        try:
            with Store(self.store.path, busy_timeout_ms=5_000) as store:
                if store.run_lean(self.run_id)["stored_status"] in ACTIVE:
                    store.finish_run(self.run_id, FAILED, error)
        except MlmlabError:
            pass

    def finish(self, status: str, error: str | None) -> None:
        """Record the final status (`Store.finish_run`); its errors are the caller's to handle."""
        self.store.finish_run(self.run_id, status, error)

    def summary(self) -> str:
        return (f"logged {self.rows_logged} metric rows, {self.samples_logged} samples and "
                f"{self.checkpoints_written} checkpoints")
