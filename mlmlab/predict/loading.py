"""Which checkpoint a user means, and its predictor loaded once: shared by `mlmlab predict` and the app."""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from mlmlab.errors import CheckpointError
from mlmlab.predict.predictor import Predictor
from mlmlab.predict.results import CheckpointRef
from mlmlab.store import Store

# One sentence is a few (1, T ≤ 128) matrix products: a second CPU thread saves almost nothing
# when the machine is idle, and when training runs or tests share the cores, OpenMP threads
# waiting on each other turned a 3 ms prediction into 50-500 ms (experiments/bench_predict.py).
PREDICT_THREADS = 1


def resolve_checkpoint(store: Store, run_ref: str | int, step: int | None = None) -> CheckpointRef:
    """The run's latest checkpoint, or the one at `step`, as the store lists them."""
    run = store.find_run(run_ref)
    rows = store.checkpoints(run["id"])
    name = f"run {run['id']} ({run['name']})"
    if not rows:
        every = run["config"].get("train", {}).get("checkpoint_every", "?")
        raise CheckpointError(
            f"{name} has no checkpoint yet: it is {run['status']} at step {run['step']}, "
            f"and writes one every {every} steps"
        )
    if step is None:
        row = rows[-1]
    else:
        matches = [r for r in rows if r["step"] == step]
        if not matches:
            steps = ", ".join(str(r["step"]) for r in rows)
            raise CheckpointError(f"{name} has no checkpoint at step {step} (it has: {steps})")
        row = matches[0]
    return CheckpointRef(run["id"], run["name"], row["step"], Path(row["path"]), row.get("eval_loss"), row.get("eval_acc"))


class PredictorCache:
    """Predictors by checkpoint file, loaded once and kept (a few, most recently used) while open.

    Thread-safe: the app's workers share one cache, and a second request for a checkpoint that is
    still loading waits for the first instead of loading it again.
    """

    def __init__(self, size: int = 4, device: str = "cpu"):
        self.size, self.device = size, device
        self._items: OrderedDict[tuple[str, int], Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | Path) -> Predictor:
        path = Path(path)
        try:
            key = (str(path.resolve()), path.stat().st_mtime_ns)  # a rewritten file is a new checkpoint
        except OSError:
            raise CheckpointError(f"checkpoint {path}: file is missing") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            predictor = Predictor.load(path, self.device)
            self._items[key] = predictor
            while len(self._items) > self.size:
                self._items.popitem(last=False)
            return predictor

    def __contains__(self, path: str | Path) -> bool:
        path = Path(path)
        return any(key[0] == str(path.resolve()) for key in self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def use_prediction_threads(threads: int = PREDICT_THREADS) -> None:
    """Set torch's intra-op CPU threads for this process. Only front ends that own their process
    (`mlmlab predict`, the app) call this: it is process-wide, and training wants every core."""
    torch.set_num_threads(threads)


def load_predictor(db_path: Path, run_ref: str | int, step: int | None, cache: PredictorCache) -> tuple[CheckpointRef, Predictor]:
    """The checkpoint a user means (run id or name, latest or at `step`) and its predictor."""
    with Store(db_path, readonly=True) as store:
        ref = resolve_checkpoint(store, run_ref, step)
    return ref, cache.get(ref.path)
