"""Which checkpoint a user means, and its predictor loaded once: shared by `mlmlab predict` and the app.

A user may also mean a local Hugging Face model directory instead of a run (`hf_dir.model_dir_of`):
its predictor is an `hf_model.HFPredictor`, cached the same way and keyed by the directory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import torch

from mlmlab.errors import CheckpointError, MlmlabError, StoreError
from mlmlab.predict.hf_dir import directory_stamp, model_dir_of
from mlmlab.predict.predictor import Predictor
from mlmlab.predict.results import CheckpointRef, ModelDirRef
from mlmlab.store import Store

Ref = CheckpointRef | ModelDirRef  # what a prediction was made with

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
        """The predictor of a checkpoint file, or of a model directory (an HFPredictor)."""
        path = Path(path)
        try:
            # A rewritten file is a new checkpoint; a directory saved again is a new model.
            key = (str(path.resolve()), directory_stamp(path) if path.is_dir() else path.stat().st_mtime_ns)
        except OSError:
            raise CheckpointError(f"checkpoint {path}: file is missing") from None
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            predictor = _load(path, self.device)
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


def _load(path: Path, device: str) -> Predictor:
    if path.is_dir():
        from mlmlab.predict.hf_model import load_hf_predictor  # brings transformers, only for a directory

        return load_hf_predictor(path, device)
    return Predictor.load(path, device)


def use_prediction_threads(threads: int = PREDICT_THREADS) -> None:
    """Set torch's intra-op CPU threads for this process. Only front ends that own their process
    (`mlmlab predict`, the app) call this: it is process-wide, and training wants every core."""
    torch.set_num_threads(threads)


def resolve_target(db_path: Path, run_ref: str | int, step: int | None) -> Ref:
    """What a user means by RUN[@STEP] on the command line: a model directory, or a run's checkpoint."""
    model_dir = model_dir_of(run_ref)
    if model_dir is not None:
        if step is not None:
            raise MlmlabError(f"{model_dir.path} is a model directory: it has one set of weights, no checkpoint at step {step}")
        return model_dir
    try:
        with Store(db_path, readonly=True) as store:
            return resolve_checkpoint(store, run_ref, step)
    except StoreError:
        if Path(str(run_ref)).expanduser().is_dir():  # meant as a folder, most likely: say what it lacks
            raise CheckpointError(f"no run is named {str(run_ref)!r}, and the folder {run_ref} holds no config.json: "
                                  "not a model directory saved with save_pretrained") from None
        raise


def load_predictor(db_path: Path, run_ref: str | int, step: int | None, cache: PredictorCache) -> tuple[Ref, Predictor]:
    """The checkpoint a user means (run id or name, latest or at `step`, or a model directory) and its predictor."""
    ref = resolve_target(db_path, run_ref, step)
    return ref, cache.get(ref.path)
