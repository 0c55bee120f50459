"""Starting runs from the app: `python -m mlmlab run …` as its own process, exactly as a shell would.

The run gets its own session (`start_new_session=True`), so closing the app, or Ctrl-C in its
terminal, never reaches it. Its output goes to a log file. The run's folder exists only once the
run has created its row, so the log starts in the database's `launches/` folder and is moved into
the run's folder (`run.log`) once the run says its id (`mlmlab run --id-file`, written after the
row and folder exist); the process keeps writing to the same open file. We use `subprocess.Popen`
rather than asyncio's subprocess transport, which kills a still-running child when the event loop
closes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlmlab.tui.reader import LOG_NAME


def launches_dir(db_path: Path) -> Path:
    """Where the app keeps the configs it launched and logs of runs that have no folder yet."""
    return db_path.parent / db_path.stem / "launches"


@dataclass
class Launch:
    """A run process the app started, and where its output goes."""

    process: subprocess.Popen
    log_path: Path
    label: str
    run_id: int | None = None  # known once the run has created its row
    id_file: Path | None = None  # where a new run writes its id

    @property
    def pid(self) -> int:
        return self.process.pid


def torchrun_prefix(processes: int) -> list[str]:
    """What runs `-m mlmlab` as `processes` DDP processes on this machine (torchrun, standalone);
    nothing for one process."""
    if processes <= 1:
        return []
    return ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def _start(args: list[str], log_path: Path, label: str, cwd: Path | None, processes: int = 1) -> Launch:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    prefix = torchrun_prefix(processes)
    with log_path.open("ab") as log:
        log.write(f"$ {'torchrun ' + ' '.join(prefix[2:]) + ' -m ' if prefix else ''}mlmlab {' '.join(args)}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [sys.executable, *prefix, "-m", "mlmlab", *args],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=env, close_fds=True,
        )
    return Launch(process, log_path, label)


def launch_new(db_path: Path, config_toml: str, name: str, cwd: Path | None = None, processes: int = 1) -> Launch:
    """Write the validated config to a file and start `mlmlab run FILE --db DB --name NAME`, through
    torchrun when `processes` > 1 (the Launch's process is then torchrun; the run row holds rank 0's pid)."""
    folder = launches_dir(db_path)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{_safe(name)}"
    config_path = folder / f"{stem}.toml"
    config_path.write_text(config_toml, encoding="utf-8")
    id_file = folder / f"{stem}.id"
    args = ["run", str(config_path), "--db", str(db_path), "--name", name, "--id-file", str(id_file)]
    launch = _start(args, folder / f"{stem}.log", name, cwd, processes)
    launch.id_file = id_file
    return launch


def launch_resume(db_path: Path, run_id: int, run_dir: str, sets: list[str], cwd: Path | None = None) -> Launch:
    """Start `mlmlab run --resume ID`; its output is appended to the run's own log."""
    args = ["run", "--resume", str(run_id), "--db", str(db_path)]
    for item in sets:
        args += ["--set", item]
    folder = Path(run_dir)
    log_path = folder / LOG_NAME if folder.is_dir() else launches_dir(db_path) / f"resume-{run_id}-{int(time.time())}.log"
    launch = _start(args, log_path, f"run {run_id}", cwd)
    launch.run_id = run_id
    return launch


def read_id_file(path: Path | None) -> int | None:
    """The run id a launched run wrote (it renames a complete file into place), or None if not yet."""
    if path is None:
        return None
    try:
        return int(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None


def adopt(launch: Launch, db_path: Path) -> bool:
    """Learn a new run's id from its id file, then move its log into the run's folder. True once done.

    Reads files only: the id file, and the folder's place, which depends on the database path alone.
    """
    if launch.run_id is None:
        launch.run_id = read_id_file(launch.id_file)
        if launch.run_id is None:
            return False
        launch.id_file.unlink(missing_ok=True)
    from mlmlab.store import run_folder  # sqlite-utils: loaded in a worker thread, not at the app's start

    folder = run_folder(db_path, launch.run_id)
    return adopt_log(launch, folder) == folder / LOG_NAME


def adopt_log(launch: Launch, run_dir: str | Path) -> Path:
    """Move a new run's log into its folder (same file, still being written). Returns its path."""
    target = Path(run_dir) / LOG_NAME
    if launch.log_path == target or not Path(run_dir).is_dir():
        return launch.log_path
    try:
        os.replace(launch.log_path, target)
    except OSError:
        return launch.log_path
    launch.log_path = target
    return target


def last_lines(path: Path, count: int = 3) -> list[str]:
    """The last non-empty lines of a log, for the message when a launch fails."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 8192))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()][-count:]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:40] or "run"
