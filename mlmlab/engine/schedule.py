"""What changes with the step number: the learning rate and the training sequence length."""

from __future__ import annotations

import math

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


def seq_len_at(step: int, cfg: ExperimentConfig) -> int:
    """Short-sequence warm-up: MLMs learn local statistics first, and short windows are cheaper."""
    t = cfg.train
    warm = t.short_seq_len and t.short_seq_len < t.seq_len and step < t.short_seq_steps
    return t.short_seq_len if warm else t.seq_len
