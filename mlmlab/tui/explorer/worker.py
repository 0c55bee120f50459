"""What the explorer's thread workers compute: plain requests in, plain results out, no widgets.

Everything here runs off the UI thread; the store reads open their own read-only `Store` with the
app reader's short busy timeout, so a locked database is reported in a second or two instead of
freezing anything. This module is the explorer's one door to torch: `mlmlab.predict.loading` is
imported only inside `new_predictor_cache` and `answer`, never at import. A local Hugging Face model
directory is checked here without torch or transformers (`hf_dir`); loading it is `loading`'s job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlmlab.errors import MlmlabError
from mlmlab.notation import MaskedText
from mlmlab.predict.hf_dir import check_model_dir, require_transformers
from mlmlab.predict.results import (AttentionMap, CheckpointRef, ComparisonRow, ModelDirRef, Prediction, compare_rows,
                                   disagreement_sides, same_positions)
from mlmlab.tui.reader import describe_error, read_only_store
from mlmlab.vocab import FILL_ALL

if TYPE_CHECKING:
    from mlmlab.predict.loading import PredictorCache


# --- the run and checkpoint pickers ---------------------------------------------------------------


@dataclass(frozen=True)
class Choices:
    """Every run, and the checkpoints of the one the pickers show (`run_id`, None when there are no runs)."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    run_id: int | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def read_choices(db_path: Path, wanted: int | None) -> Choices:
    """The runs, and the checkpoints of run `wanted` (or of the newest run when `wanted` is gone)."""
    try:
        with read_only_store(db_path) as store:
            runs = store.run_states()  # id, name, effective status and step: all the pickers show
            ids = [r["id"] for r in runs]
            if not ids:
                return Choices(runs)
            run_id = wanted if wanted in ids else ids[-1]
            return Choices(runs, run_id, store.checkpoints(run_id))
    except Exception as exc:  # noqa: BLE001 - shown on the status line; the next read may succeed
        return Choices(error=describe_error(exc))


@dataclass(frozen=True)
class ModelDirChoice:
    """A model directory typed into the picker: its ref when it is one, else the one line why not."""

    typed: str
    ref: ModelDirRef | None = None
    error: str | None = None


def check_model_dir_choice(typed: str) -> ModelDirChoice:
    """Whether `typed` names a local model directory mlmlab can open (the checks needing no torch)."""
    if not typed.strip():
        return ModelDirChoice(typed, error="type the path of a local model directory (saved with save_pretrained)")
    try:
        ref = check_model_dir(typed.strip())
        require_transformers()
    except MlmlabError as exc:
        return ModelDirChoice(typed, error=str(exc))
    return ModelDirChoice(typed, ref)


# --- predictions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    run_id: int
    step: int | None  # None: the run's latest checkpoint


@dataclass(frozen=True)
class ModelDirTarget:
    """A local Hugging Face model directory, predicted with in place of a run's checkpoint."""

    ref: ModelDirRef


@dataclass(frozen=True)
class Request:
    serial: int
    db_path: Path
    primary: Target | ModelDirTarget
    secondary: Target | ModelDirTarget | None
    masked: MaskedText
    top_k: int = 5
    mode: str = FILL_ALL
    attention: tuple[int | None, int | None] | None = None  # (layer, head) while the heatmap shows
    draw: tuple[int, int] | None = None  # (seed, around): first hide positions as training does


@dataclass(frozen=True)
class Side:
    ref: CheckpointRef | ModelDirRef
    prediction: Prediction
    load_seconds: float | None  # None: it was cached
    predict_ms: float


@dataclass(frozen=True)
class Outcome:
    serial: int
    masked: MaskedText  # differs from the request's after a random draw
    primary: Side
    secondary: Side | None
    disagree: tuple[int, ...]  # the primary's positions where the two disagree
    attention: AttentionMap | None
    secondary_disagree: tuple[int, ...] = ()  # the secondary's (the same, unless they read different positions)
    rows: tuple[ComparisonRow, ...] = ()  # when they read different positions (char vs subword): lined up by characters


def new_predictor_cache() -> PredictorCache:
    """A screen's predictor cache: creating it imports torch, so it happens in the first prediction worker."""
    from mlmlab.predict.loading import PredictorCache, use_prediction_threads

    use_prediction_threads()  # the app's process runs no training: runs are subprocesses
    return PredictorCache(size=4)


def answer(request: Request, cache: PredictorCache, loading: Callable[[str], None] = lambda _: None) -> Outcome:
    """Everything one request needs, computed off the UI thread with the predictors of `cache`."""
    from mlmlab.predict.loading import resolve_checkpoint

    targets = [request.primary] + ([request.secondary] if request.secondary else [])
    runs = any(isinstance(t, Target) for t in targets)  # only they need the store
    with read_only_store(request.db_path) if runs else nullcontext() as store:
        refs = [t.ref if isinstance(t, ModelDirTarget) else resolve_checkpoint(store, t.run_id, t.step) for t in targets]
    predictors, loaded = [], []
    for ref in refs:
        fresh = ref.path not in cache
        if fresh:
            loading(f"loading {ref.label} …")
        predictor = cache.get(ref.path)
        predictors.append(predictor)
        loaded.append(predictor.load_seconds if fresh else None)
    masked = request.masked
    if request.draw:
        seed, around = request.draw
        masked = predictors[0].draw_training_mask(masked, seed, around)
    sides = []
    for ref, predictor, load_seconds in zip(refs, predictors, loaded):
        start = time.perf_counter()
        prediction = predictor.predict(masked, request.top_k, request.mode)
        sides.append(Side(ref, prediction, load_seconds, (time.perf_counter() - start) * 1000))
    disagree = theirs = rows = ()
    if len(sides) == 2:
        a, b = sides[0].prediction, sides[1].prediction
        mine, other = disagreement_sides(a, b)
        disagree, theirs = tuple(mine), tuple(other)
        rows = () if same_positions(a, b) else tuple(compare_rows(a, b))
    attention = predictors[0].attention(masked, *request.attention) if request.attention else None
    return Outcome(request.serial, masked, sides[0], sides[1] if len(sides) == 2 else None, disagree, attention,
                   theirs, rows)
