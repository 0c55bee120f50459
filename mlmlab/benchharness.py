"""The A/B harness of experiments/: variants take turns on a shared machine, each in its own process.

`alternate` runs the variants in rounds (A B, B A, ...) and records each round's tokens/s with how
busy the rest of the machine was meanwhile (`ForeignLoad`), so drifting load hits every variant
alike and disturbed rounds can be set aside (`Alternation`). `IsolatedStep` keeps a contender in a
worker process of its own. Used by the scripts in experiments/ and their tests, not by `mlmlab`.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch


class ForeignLoad:
    """How busy the rest of the machine was during an interval: other processes' CPU time as a
    share of all cores (Linux /proc/stat; None elsewhere). On a shared machine a round that others
    disturbed can then be told from a clean one instead of being averaged in."""

    def __init__(self, own_pids: Iterable[int] = ()):
        self.available = Path("/proc/stat").is_file()
        self.tick = os.sysconf("SC_CLK_TCK") if self.available else 100
        self.cpus = os.cpu_count() or 1
        self.own_pids = list(own_pids)  # worker processes whose CPU time is ours, not foreign

    def _sample(self) -> tuple[float, float, float]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        mine = os.times()
        return busy / self.tick, mine.user + mine.system + self._workers_cpu(), time.perf_counter()

    def _workers_cpu(self) -> float:
        total = 0
        for pid in self.own_pids:
            try:  # fields 14 and 15 (utime, stime), counted after the ")" that ends the command name
                total += sum(int(v) for v in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
            except (OSError, ValueError, IndexError):
                pass
        return total / self.tick

    def start(self):
        return self._sample() if self.available else None

    def share(self, started) -> float | None:
        if started is None:
            return None
        busy, mine, now = self._sample()
        wall = max(now - started[2], 1e-9)
        return max(0.0, (busy - started[0]) - (mine - started[1])) / (wall * self.cpus)


@dataclass
class Alternation:
    """Tokens/s per round of each variant, and how busy the rest of the machine was meanwhile."""

    tokens_per_s: dict[str, list[float]]
    foreign: dict[str, list[float | None]]

    def clean_rounds(self, max_foreign: float = 0.05) -> list[int]:
        """Rounds in which no variant shared the machine with more than `max_foreign` of its CPU."""
        n = min(len(v) for v in self.tokens_per_s.values())
        return [r for r in range(n) if all(f[r] is not None and f[r] <= max_foreign for f in self.foreign.values())]

    def rounds_used(self, min_clean: int = 3, max_foreign: float = 0.05) -> tuple[list[int], bool]:
        """The clean rounds when there are at least `min_clean` of them, else all (flag: clean?)."""
        clean = self.clean_rounds(max_foreign)
        if len(clean) >= min_clean:
            return clean, True
        return list(range(min(len(v) for v in self.tokens_per_s.values()))), False

    def median(self, name: str, rounds: list[int]) -> float:
        return statistics.median(self.tokens_per_s[name][r] for r in rounds)

    def ratio(self, a: str, b: str, rounds: list[int]) -> float:
        """Median over `rounds` of a's tokens/s ÷ b's in the same round."""
        return statistics.median(self.tokens_per_s[a][r] / self.tokens_per_s[b][r] for r in rounds)


def alternate(variants: dict[str, Callable[[], object]], *, rounds: int, steps: int, tokens_per_step: dict[str, int] | int,
              sync: Callable[[], None] = lambda: None, log: Callable[[str], None] | None = None) -> Alternation:
    """Tokens/s of each variant per round, the variants taking turns `rounds` times (A B A B ...).

    On a shared or throttling machine, load drifts; taking turns puts every variant under the same
    drift, so ratios of per-round figures compare like with like, and rounds that other processes
    disturbed can be set aside (`Alternation.rounds_used`). Each callable runs one step; an
    IsolatedStep runs a round's steps in its worker with one message, and its CPU time counts as ours.
    """
    result = Alternation({name: [] for name in variants}, {name: [] for name in variants})
    load = ForeignLoad(v.pid for v in variants.values() if isinstance(v, IsolatedStep))
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))  # no variant always goes first
        for name in order:
            step = variants[name]
            sync()
            started = load.start()
            start = time.perf_counter()
            if isinstance(step, IsolatedStep):
                step.run(steps)
            else:
                for _ in range(steps):
                    step()
            sync()
            tokens = tokens_per_step if isinstance(tokens_per_step, int) else tokens_per_step[name]
            result.tokens_per_s[name].append(tokens * steps / (time.perf_counter() - start))
            result.foreign[name].append(load.share(started))
        if log:
            log(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{n} {v[-1]:,.0f}" + (f" (others {result.foreign[n][-1]:.0%})" if result.foreign[n][-1] is not None else "")
                for n, v in result.tokens_per_s.items()))
    return result


def interleaved_ms(fns: dict, reps: int, sync: Callable[[], None]) -> dict[str, list[float]]:
    """Milliseconds per call of each function, the calls interleaved (a b a b ...) after 5 warm-up calls each."""
    for fn in fns.values():
        for _ in range(5):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


class IsolatedStep:
    """A training step that lives in its own process: `factory(*args)` builds it there.

    Two contenders in one process disturb each other: after `torch.compile`'s generated kernels
    have run, Hugging Face's eager step ran 25% slower in the same process on a 2-core CPU (and
    ours slower beside it), so in-process alternation measured the neighbour, not the contender.
    Each contender therefore gets a process of its own; `alternate` wakes one at a time over a
    pipe. `factory` must be importable by name (a module-level function). It returns the step: a
    callable, which may also have methods for `call` (a trainer's `evaluate`, say).
    """

    def __init__(self, factory: Callable[..., Callable[[], object]], *args: object):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_steps, args=(child, factory, args), daemon=True)
        self._process.start()
        child.close()
        self.pid = self._process.pid
        self._reply()  # built (or its error raised here)

    def __call__(self) -> None:
        self.run(1)

    def run(self, steps: int) -> None:
        """Run `steps` steps in the worker and wait for them (synchronised on CUDA)."""
        self._conn.send(("run", steps))
        self._reply()

    def call(self, method: str, *args: object) -> object:
        """Call a method of the worker's step object and return its (picklable) result."""
        self._conn.send(("call", method, args))
        return self._reply()

    def _reply(self) -> object:
        try:
            status, detail = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"benchmark worker {self.pid} died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"benchmark worker {self.pid} failed:\n{detail}")
        return detail

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _serve_steps(conn, factory: Callable[..., Callable[[], object]], args: tuple) -> None:
    try:
        step = factory(*args)
        conn.send(("ready", None))
        while (request := conn.recv()) is not None:
            result = None
            if request[0] == "run":
                for _ in range(request[1]):
                    step()
            else:
                result = getattr(step, request[1])(*request[2])
            if torch.cuda.is_initialized():
                torch.cuda.synchronize()
            conn.send(("done", result))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
