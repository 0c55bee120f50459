"""What changes with the step number: the learning rate, and the training windows' length and count."""

from __future__ import annotations

import math
from typing import NamedTuple

from mlmlab.config import ExperimentConfig


def lr_at(step: int, cfg: ExperimentConfig, elapsed: float = 0.0) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warm-up, then the schedule.

    The cosine decay follows whichever budget runs out first: `train.steps`, or `train.max_minutes`
    of training time (`elapsed` seconds so far). A time-limited run (the quick preset) then anneals
    by its deadline instead of stopping with the learning rate still near its peak.
    """
    t = cfg.train
    if t.schedule == "noam":  # lr · d_model^-0.5 · min(n^-0.5, n · warmup^-1.5), n = step + 1
        n, warm = step + 1, max(t.warmup_steps, 1)
        return t.lr * cfg.model.d_model**-0.5 * min(n**-0.5, n * warm**-1.5)
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
    if t.max_minutes:
        progress = max(progress, elapsed / (60 * t.max_minutes))
    progress = min(1.0, progress)
    floor = t.lr * t.min_lr_ratio
    return floor + (t.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Stage(NamedTuple):
    batch_size: int
    seq_len: int


def seq_len_stages(cfg: ExperimentConfig) -> list[tuple[int, int]]:
    """The (first step, seq_len) stages of the sequence-length curriculum.

    `train.seq_len_schedule` when given; otherwise the short-sequence warm-up of older configs,
    derived exactly as it always ran: `short_seq_len` for the first `short_seq_steps` steps when it
    is below `seq_len`, then `seq_len`.
    """
    t = cfg.train
    if t.seq_len_schedule:
        return [(step, length) for step, length in t.seq_len_schedule]
    if t.short_seq_len and t.short_seq_len < t.seq_len and t.short_seq_steps:
        return [(0, t.short_seq_len), (t.short_seq_steps, t.seq_len)]
    return [(0, t.seq_len)]


def stage_at(step: int, cfg: ExperimentConfig) -> Stage:
    """Batch size and window length for optimizer step `step` (0-based).

    With `train.schedule_keeps_tokens`, the batch grows as the windows shrink so every step trains on
    about as many tokens as a step of the last stage: batch = floor(batch_size · last_len / seq_len),
    at least 1. Rounding down keeps a step's tokens (and the activations the linear layers hold) at
    most the last stage's, short of it by less than one window.
    """
    stages = seq_len_stages(cfg)
    length = next(length for start, length in reversed(stages) if start <= step)
    batch = cfg.train.batch_size
    if cfg.train.schedule_keeps_tokens:
        batch = max(1, batch * stages[-1][1] // length)
    return Stage(batch, length)


def seq_len_at(step: int, cfg: ExperimentConfig) -> int:
    """Short windows first: MLMs learn local statistics first, and short windows are cheaper."""
    return stage_at(step, cfg).seq_len


def batch_varies(cfg: ExperimentConfig) -> bool:
    """Whether the batch size changes during the run (then it is logged with the seq_len)."""
    return cfg.train.schedule_keeps_tokens and len({length for _, length in seq_len_stages(cfg)}) > 1


def longest_seq_len(cfg: ExperimentConfig) -> int:
    """The longest window training or evaluation draws: each side of the corpus split must hold it."""
    return max(cfg.train.seq_len, *(length for _, length in seq_len_stages(cfg)))


def describe_stages(cfg: ExperimentConfig) -> str:
    """The curriculum in words, e.g. `0: 32, 2000: 128` (with the batch sizes when they change)."""
    stages = seq_len_stages(cfg)
    batch = batch_varies(cfg)
    return ", ".join(f"{start}: {length}" + (f" x {stage_at(start, cfg).batch_size}" if batch else "")
                     for start, length in stages)
