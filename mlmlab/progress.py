"""How a headless run reports: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time


def pick_reporter(quiet: bool, stream=None):
    stream = stream or sys.stderr
    if quiet:
        from mlmlab.engine.reporting import SilentReporter

        return SilentReporter()
    return BarReporter(stream) if stream.isatty() else LineReporter(stream)


class BarReporter:
    """rich's progress bar: step, loss, accuracy, tokens/s and ETA."""

    def __init__(self, stream):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.console = Console(file=stream)
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.task = None

    def start(self, total: int, initial: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=initial, stats="")

    def update(self, step: int, stats: dict[str, float]) -> None:
        self.bar.update(self.task, completed=step, stats=format_stats(stats))

    def message(self, text: str) -> None:
        self.bar.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self.bar.stop()


class LineReporter:
    """One plain line every few seconds, for logs and pipes."""

    def __init__(self, stream, every_s: float = 5.0):
        self.stream, self.every_s = stream, every_s
        self.last = 0.0
        self.total = 0

    def start(self, total: int, initial: int) -> None:
        self.total = total
        self._write(f"training: step {initial}/{total}")

    def update(self, step: int, stats: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s or step == self.total:
            self.last = now
            self._write(f"step {step}/{self.total} {format_stats(stats)}")

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        self.stream.flush()

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def format_stats(stats: dict[str, float]) -> str:
    parts = [f"loss {stats['train_loss']:.3f}", f"acc {stats['train_acc']:.1%}"]
    if "eval_acc" in stats:
        parts.append(f"eval {stats['eval_acc']:.1%}")
    parts.append(f"{stats['tokens_per_s']:,.0f} tok/s")
    return "  ".join(parts)
