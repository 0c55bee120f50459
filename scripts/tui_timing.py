"""Measure the app as a user meets it, in a real terminal (tmux): start-up time and key-press latency.

    python scripts/tui_timing.py start DB [--repeat 7]   # `mlmlab --db DB` to its first screen, whole process
    python scripts/tui_timing.py keys DB                 # key press to changed screen (start a run first)

Each figure is the time from the command (or `tmux send-keys`) to the first `capture-pane` that shows
the expected text, polled every 20 ms; so it includes tmux's own latency, and is an upper bound.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

SESSION = "mlmlab-timing"


def mlmlab_command(db: str) -> str:
    script = Path(sys.executable).with_name("mlmlab")
    exe = str(script) if script.exists() else f"{sys.executable} -m mlmlab"
    return f"{exe} --db {db}; sleep 60"


def pane() -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", SESSION], capture_output=True, text=True).stdout


def wait_for(marker: str, since: float, timeout: float = 20.0) -> float | None:
    while marker not in pane():
        if time.perf_counter() - since > timeout:
            return None
        time.sleep(0.02)  # polling tmux faster steals the CPU from what it measures
    return time.perf_counter() - since


def start_app(db: str) -> float:
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
    started = time.perf_counter()
    subprocess.run(["tmux", "new", "-d", "-s", SESSION, "-x", "120", "-y", "35", mlmlab_command(db)], check=True)
    return started


def stop_app() -> None:
    subprocess.run(["tmux", "send-keys", "-t", SESSION, "q"])
    time.sleep(0.8)
    subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)


def summary(label: str, values: list[float | None]) -> str:
    got = sorted(v for v in values if v is not None)
    if not got:
        return f"{label}: no measurement"
    pick = lambda q: got[min(len(got) - 1, int(len(got) * q))] * 1000  # noqa: E731
    return (f"{label}: n={len(got)} missed={len(values) - len(got)} median {pick(0.5):.0f} ms, "
            f"p90 {pick(0.9):.0f} ms, max {got[-1] * 1000:.0f} ms")


def loaded_marker(db: str) -> str:
    """Text the runs screen shows only once it has read the database."""
    import sqlite3

    if not Path(db).exists():
        return "Welcome to mlmlab"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count = conn.execute("select count(*) from runs").fetchone()[0]
    return f" {count} runs" if count else "Welcome to mlmlab"


def cmd_start(args: argparse.Namespace) -> None:
    first, rows = [], []
    marker = loaded_marker(args.db)
    for _ in range(args.repeat):
        started = start_app(args.db)
        first.append(wait_for("New run", started))  # the footer: the first screen is drawn
        rows.append(wait_for(marker, started))
        stop_app()
    print(summary("first screen", first))
    print(summary("title with the run count (first database read shown)", rows))


def press(key: str, marker: str) -> float | None:
    started = time.perf_counter()
    subprocess.run(["tmux", "send-keys", "-t", SESSION, key])
    return wait_for(marker, started, timeout=5)


def cmd_keys(args: argparse.Namespace) -> None:
    start_app(args.db)
    time.sleep(3)
    table = []
    for _ in range(4):
        for name in ("active", "completed", "stopped", "failed/crashed", "all"):
            table.append(press("f", f"status: {name} "))
            time.sleep(0.3)
    press("Enter", "Plots 1")  # the run under the cursor: the newest
    time.sleep(2)
    tabs = []
    for _ in range(8):
        for key, marker in (("4", "folder "), ("1", "x: step (x)")):
            tabs.append(press(key, marker))
            time.sleep(0.3)
    subprocess.run(["tmux", "send-keys", "-t", SESSION, "Escape"])
    stop_app()
    print(summary("runs screen, f (status filter)", table))
    print(summary("run detail, switch tab (config, plots)", tabs))


def main() -> None:
    if not shutil.which("tmux"):
        raise SystemExit("needs tmux")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(required=True)
    start = sub.add_parser("start")
    start.add_argument("db")
    start.add_argument("--repeat", type=int, default=7)
    start.set_defaults(func=cmd_start)
    keys = sub.add_parser("keys")
    keys.add_argument("db")
    keys.set_defaults(func=cmd_keys)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
