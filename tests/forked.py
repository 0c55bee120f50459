"""The test side of tests/mlmlab_fault_server.py: start it, send it `mlmlab` commands, read outcomes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


class FaultServer:
    """A running fault server; use it as a context manager so it is always shut down."""

    def __init__(self, workdir: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "mlmlab_fault_server.py")], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.workdir = workdir
        self.count = 0

    def _request(self, argv: list[str], fault: str | None, hit: int) -> dict:
        self.count += 1
        out, flushed = self.workdir / f"out-{self.count}.txt", self.workdir / f"flushed-{self.count}.txt"
        return {"argv": argv, "fault": fault, "hit": hit, "out": str(out), "flushed": str(flushed)}

    def _send(self, request: dict) -> None:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def start(self, argv: list[str], fault: str | None = None, hit: int = 1) -> tuple[int, Path, Path]:
        """Start `mlmlab ARGV` (killing itself at the `hit`-th `fault`): (pid, its output, its flushed-rows log)."""
        request = self._request(argv, fault, hit)
        self._send(request)
        return json.loads(self.proc.stdout.readline())["pid"], Path(request["out"]), Path(request["flushed"])

    def start_together(self, argvs: list[list[str]]) -> list[tuple[int, Path]]:
        """Start several `mlmlab` commands at once; then call wait() once for each, in order."""
        batch = [self._request(argv, None, 1) for argv in argvs]
        self._send({"batch": batch})
        return [(json.loads(self.proc.stdout.readline())["pid"], Path(r["out"])) for r in batch]

    def wait(self) -> dict:
        """The next started command's outcome: {"pid", "code", "signal"}."""
        return json.loads(self.proc.stdout.readline())

    def run(self, argv: list[str]) -> tuple[dict, str]:
        _, out, _ = self.start(argv)
        return self.wait(), out.read_text()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __enter__(self) -> "FaultServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
