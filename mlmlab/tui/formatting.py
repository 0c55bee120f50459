"""Pure helpers that turn run data into Rich `Text`: statuses, bars, durations, samples, smoothing.

Everything here builds `Text` objects, never markup strings: a BERT tool shows `[MASK]`, which
markup would swallow as a tag.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from rich.text import Text

from mlmlab.budget import STEPS, TIME, Budget, minutes_text, run_budget
from mlmlab.vocab import (ACTIVE, COMPLETED, CRASHED, FAILED, KEEP, KIND_LABELS, MASKED, QUEUED, RANDOM, RUNNING,
                          STOPPED, VISIBLE, token_glyph)

STATUS_STYLES = {
    QUEUED: "yellow",
    RUNNING: "bold green",
    COMPLETED: "cyan",
    STOPPED: "magenta",
    FAILED: "bold white on red",
    CRASHED: "bold white on dark_red",
}
STATUS_MARKS = {QUEUED: "◌", RUNNING: "▶", COMPLETED: "✓", STOPPED: "■", FAILED: "✗", CRASHED: "✗"}

# How a hidden position is drawn wherever mask kinds appear: the run's samples and the explorer.
KIND_STYLES = {MASKED: "bold white on dark_blue", RANDOM: "bold black on magenta", KEEP: "bold black on cyan"}

# One colour per run in overlaid plots (plotext colour names) and the same colour in Rich legends.
RUN_COLORS = ["cyan", "orange", "green", "magenta", "blue", "red", "yellow", "white"]
RICH_COLORS = ["cyan", "dark_orange", "green", "magenta", "blue", "red", "yellow", "white"]

X_AXES = ("step", "tokens", "elapsed")
X_LABELS = {"step": "step", "tokens": "tokens seen", "elapsed": "training time (min)"}
SMOOTHING = (0.0, 0.6, 0.9, 0.97)


def status_text(status: str) -> Text:
    return Text(f"{STATUS_MARKS.get(status, '?')} {status}", style=STATUS_STYLES.get(status, ""))


def bar(fraction: float, width: int) -> str:
    """A horizontal bar `width` cells wide; eighth blocks give sub-cell resolution."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")).ljust(width)


def progress_text(step: int, total: int, width: int = 10) -> Text:
    """A bar of `width` cells plus `step/total`."""
    return bar_text(0.0 if not total else step / total, f"{step}/{total}", width)


def bar_text(fraction: float, label: str, width: int) -> Text:
    """A bar of `width` cells, green when full, then the label."""
    fraction = max(0.0, min(1.0, fraction))
    text = Text(bar(fraction, width), style="green" if fraction >= 1 else "blue")
    text.append(f" {label}", style="")
    return text


def count_text(n: int) -> str:
    """A count in at most four characters and a unit, rounded, never cut: 1327 -> 1.3k, 100000 -> 100k."""
    if abs(n) < 1000:
        return str(n)
    for size, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        value = n / size
        if abs(value) < 999.5 or unit == "G":
            break
    return (f"{value:.1f}".removesuffix(".0") if abs(value) < 9.95 else f"{value:.0f}") + unit


def fit(candidates: Sequence[str], width: int) -> str:
    """The first text that fits `width` cells; when none does, the last one cut with an ellipsis.

    Callers list the full figure first and shorter honest forms after it, so a narrow cell shows
    an abbreviation or a visible cut, never a shorter number.
    """
    for text in candidates:
        if len(text) <= width:
            return text
    return candidates[-1][: max(0, width - 1)] + "…"


def budget_labels(budget: Budget, step: int, total: int, elapsed: float) -> list[str]:
    """Progress against the binding budget, from the fullest wording to the shortest."""
    steps = [f"{step}/{total}", f"{count_text(step)}/{count_text(total)}"]
    if budget.complete and budget.binding == STEPS:
        return [f"{label} steps" for label in steps] + [f"{count_text(total)} steps"] + steps
    if budget.complete:
        return [f"{label} · {budget.reason}" for label in steps] + [budget.reason]
    if budget.binding == TIME:
        return [f"{fmt_duration(elapsed)} of {minutes_text(budget.max_minutes)}",
                f"{fmt_duration(elapsed)}/{minutes_text(budget.max_minutes)}"]
    return steps


def budget_sentence(budget: Budget, step: int, total: int, elapsed: float) -> str:
    """Both budgets in full and which one binds, for the run detail's header (which wraps, never cuts)."""
    words = f"{step}/{total} steps"
    if budget.max_minutes:
        words += f" · {fmt_duration(elapsed)} of {minutes_text(budget.max_minutes)}"
    if budget.complete:
        return f"{words} · complete: {budget.reason}"
    if budget.max_minutes:
        return f"{words} · the {'time' if budget.binding == TIME else 'step'} budget binds"
    return words


def budget_text(state: dict[str, Any], bar_width: int, label_width: int, now: float | None = None) -> Text:
    """A run's bar and label for the budget that binds it, fitted to `label_width` cells."""
    elapsed = run_duration(state, now) or 0.0
    budget = run_budget(state["status"], state["step"], state["total_steps"], elapsed, state.get("max_minutes"))
    label = fit(budget_labels(budget, state["step"], state["total_steps"], elapsed), label_width)
    return bar_text(budget.fraction, label, bar_width)


def fmt_num(value: Any, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_tokens(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.0f}"


def run_duration(state: dict[str, Any], now: float | None = None) -> float | None:
    """Training seconds so far; a running run's figure grows between its heartbeats."""
    elapsed = state.get("elapsed") or 0.0
    if state.get("status") == RUNNING and state.get("heartbeat_at"):
        now = time.time() if now is None else now
        return elapsed + max(0.0, min(now - state["heartbeat_at"], 60.0))
    return elapsed if state.get("started_at") else None


def run_eta(state: dict[str, Any], max_minutes: float = 0.0) -> float | None:
    """Seconds left for an active run: steps left at the rate so far, capped by train.max_minutes."""
    if state.get("status") not in ACTIVE:
        return None
    step, total, elapsed = state.get("step") or 0, state.get("total_steps") or 0, state.get("elapsed") or 0.0
    if step <= 0 or elapsed <= 0:
        return None
    eta = (total - step) * elapsed / step
    if max_minutes:
        eta = min(eta, max(0.0, max_minutes * 60 - elapsed))
    return eta


def kind_legend() -> Text:
    """A swatch per mask kind in its KIND_STYLES colour, for the legends of samples and the explorer."""
    text = Text()
    for kind in (MASKED, RANDOM, KEEP):
        text.append(f" {KIND_LABELS[kind]} ", style=KIND_STYLES[kind])
        text.append(" ")
    return text


def sample_lines(tokens: Sequence[Sequence[str]]) -> tuple[Text, Text]:
    """(what the model saw, what it predicted) for one sample, as in the reference's `sample()`.

    The input line draws every chosen position in its mask kind's colour (KIND_STYLES), with `[MASK]`
    as ▒. The output line shows every chosen position's prediction green when right and red when
    wrong; unmasked positions are dim.
    """
    seen, predicted = Text(), Text()
    for original, shown, guess, kind in tokens:
        if kind == VISIBLE:
            seen.append(token_glyph(shown, space=False), style="dim")
            predicted.append(token_glyph(original, space=False), style="dim")
            continue
        seen.append(token_glyph(shown), style=KIND_STYLES.get(kind, ""))
        right = guess == original
        predicted.append(token_glyph(guess), style="bold green" if right else "bold white on red")
    return seen, predicted


def smooth(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average; weight 0 returns the values unchanged."""
    if not weight:
        return list(values)
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = last * weight + (1 - weight) * value
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return out


def x_value(x_axis: str, value: float) -> float:
    """Plot units for an x axis: elapsed seconds are shown in minutes."""
    return value / 60 if x_axis == "elapsed" else value


def config_diff(configs: Sequence[dict[str, Any]]) -> list[tuple[str, list[Any]]]:
    """Keys (flattened, sorted) whose values are not all the same across the configs."""
    from mlmlab.config import flatten

    flat = [flatten(cfg) for cfg in configs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    rows = []
    for key in keys:
        values = [f.get(key, missing) for f in flat]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, [None if v is missing else v for v in values]))
    return rows


def bucket_points(points: Sequence[tuple[float, float]], buckets: int) -> list[tuple[float, float]]:
    """The store's SQL downsampling done in memory: per x bucket keep min, max and last point.

    Used when live-appended points outgrow the plot, so a long-open screen stays as faithful as a
    fresh SQL read without re-reading the run.
    """
    if buckets <= 0 or len(points) <= 3 * buckets:
        return list(points)
    lo, hi = points[0][0], points[-1][0]
    span = (hi - lo) or 1e-12
    chosen: dict[int, dict[str, tuple[int, tuple[float, float]]]] = {}
    for index, point in enumerate(points):
        bucket = int((point[0] - lo) * buckets / (span + 1e-12))
        slot = chosen.setdefault(bucket, {"min": (index, point), "max": (index, point), "last": (index, point)})
        if point[1] < slot["min"][1][1]:
            slot["min"] = (index, point)
        if point[1] > slot["max"][1][1]:
            slot["max"] = (index, point)
        slot["last"] = (index, point)
    keep = sorted({entry for slot in chosen.values() for entry in slot.values()})
    return [point for _, point in keep]
