"""The `mlmlab` app: screens over one run database, and the operations they share.

Start-up imports only Textual and this package's light modules: the store (sqlite-utils pulls in
numpy), pydantic, plotext and torch load later, in worker threads or in the screens that need
them. Operations that touch the database or processes (launch, stop, resume, delete, tags) live
here, on the App, as workers: a screen may be dismissed while its operation finishes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual import work
from textual.app import App, SystemCommand
from textual.reactive import reactive
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from mlmlab.tui.launch import Launch, adopt, last_lines, launch_new, launch_resume
from mlmlab.tui.reader import describe_error, reader
from mlmlab.vocab import ACTIVE

WRITE_BUSY_TIMEOUT_MS = 5000  # the app's writes wait this long for a training process's transaction
STOP_WAIT_S = 120.0  # how long a stop waits for a queued run to start running

DEVICE_PROBE = (
    "import json; from mlmlab.devices import available_devices; print(json.dumps(available_devices()))"
)


class MlmlabApp(App):
    """A terminal workbench for masked language models."""

    CSS_PATH = "app.tcss"
    TITLE = "mlmlab"
    devices: reactive[list[dict] | None] = reactive(None)
    """What this machine offers to train on, found by a probe process (None until found)."""

    def __init__(self, db_path: Path, *, poll_interval: float = 1.0, presets_dir: Path | None = None,
                 cwd: Path | None = None) -> None:
        super().__init__()
        self.db_path = Path(db_path).expanduser().absolute()
        self.poll_interval = poll_interval
        self.presets_dir = presets_dir
        self.cwd = cwd
        self.launches: dict[int, Launch] = {}
        self.device_error: str | None = None

    def on_mount(self) -> None:
        from mlmlab.tui.screens.runs import RunsScreen

        if self.is_headless:
            self.animation_level = "none"
        self.push_screen(RunsScreen())

    # --- messages to the user -------------------------------------------------------------------

    def say(self, message: str, severity: str = "information", timeout: float | None = None) -> None:
        """A notification; never markup, since run names and errors may hold brackets."""
        self.notify(message, severity=severity, markup=False, timeout=timeout or (10 if severity == "error" else 5))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """One place for worker failures: a message in the app, never a traceback."""
        if event.state == WorkerState.ERROR:
            error = event.worker.error
            self.say(f"{event.worker.description or event.worker.name} failed: {describe_error(error)}", "error")

    # --- the command palette -------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every key of the current screen is also a palette command."""
        from mlmlab.tui.screens.modals import screen_keys

        yield from super().get_system_commands(screen)
        for active in screen_keys(screen):
            binding = active.binding
            if binding.action == "app.quit":
                continue  # the palette has its own Quit
            key = self.get_key_display(binding)
            yield SystemCommand(binding.description, f"key {key}" + (f": {binding.tooltip}" if binding.tooltip else ""),
                                partial(self.call_later, active.node.run_action, binding.action))

    # --- devices ---------------------------------------------------------------------------------

    def find_devices(self) -> None:
        if self.devices is None and not any(w.group == "devices" for w in self.workers):
            self._probe_devices()

    @work(group="devices", exit_on_error=False, description="finding devices")
    async def _probe_devices(self) -> None:
        """Ask a separate process what devices exist: importing torch here would cost the app its speed."""
        proc = subprocess.Popen([sys.executable, "-c", DEVICE_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, cwd=self.cwd)
        try:
            while proc.poll() is None:  # its output is a few lines: the pipes cannot fill up
                await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            proc.kill()
            proc.wait()
            raise
        out, err = proc.communicate()
        try:
            self.devices = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            self.device_error = f"could not list devices: {tail[0]}"
            self.devices = [{"id": "cpu", "label": "cpu"}]

    # --- launching and watching runs ------------------------------------------------------------

    def start_new_run(self, config_toml: str, name: str, processes: int = 1) -> Launch:
        """Launch `mlmlab run` (through torchrun when `processes` > 1) and follow it."""
        launch = launch_new(self.db_path, config_toml, name, cwd=self.cwd, processes=processes)
        self.launches[launch.pid] = launch
        self._watch_launch(launch)
        self.say(f"launched '{name}' (pid {launch.pid}); it appears in the table in a moment")
        return launch

    @work(group="launches", exit_on_error=False, description="watching a run")
    async def _watch_launch(self, launch: Launch) -> None:
        """Follow a run process: move its log into its folder, say how it ended. Closing the app leaves it running."""
        adopted = launch.run_id is not None
        while launch.process.poll() is None:
            if not adopted:
                adopted = await asyncio.to_thread(adopt, launch, self.db_path)
            await asyncio.sleep(0.3)
        if not adopted:
            await asyncio.to_thread(adopt, launch, self.db_path)
        self.launches.pop(launch.pid, None)
        code = launch.process.returncode
        if code == 0:
            status = await asyncio.to_thread(self._final_status, launch.run_id)
            self.say(f"run {launch.run_id} '{launch.label}' {status}", "information")
        else:
            tail = last_lines(launch.log_path, 1)
            why = tail[0] if tail else f"exit status {code}"
            where = f"run {launch.run_id}" if launch.run_id else f"'{launch.label}'"
            self.say(f"{where} failed: {why}\n(log: {launch.log_path})", "error", timeout=20)

    def _final_status(self, run_id: int | None) -> str:
        if run_id is None:
            return "ended"
        try:
            with reader(self.db_path) as store:
                return store.summaries([run_id])[0]["status"]
        except Exception as exc:  # noqa: BLE001
            return f"ended (status unknown: {describe_error(exc)})"

    # --- operations on a run (shared by every screen) -------------------------------------------

    def _write_store(self):
        from mlmlab.store import Store

        return Store(self.db_path, busy_timeout_ms=WRITE_BUSY_TIMEOUT_MS)

    def _read_run(self, run_id: int) -> dict[str, Any]:
        with reader(self.db_path) as store:
            run = store.run(run_id)
            checkpoints = store.checkpoints(run_id)
        run.pop("vocab", None)
        run["checkpoint_step"] = checkpoints[-1]["step"] if checkpoints else None
        return run

    @work(group="ops", exit_on_error=False, description="stopping a run")
    async def stop_run(self, run_id: int) -> None:
        from mlmlab import ops

        outcome = await asyncio.to_thread(ops.stop_run, self.db_path, run_id, wait_while_queued_s=STOP_WAIT_S,
                                          busy_timeout_ms=WRITE_BUSY_TIMEOUT_MS)
        if outcome.asked:
            how = "" if outcome.signalled else " (on another host: it stops at its next flush)"
            self.say(f"asked run {run_id} '{outcome.run['name']}' to stop: it checkpoints, then ends stopped{how}")
        elif outcome.status in ACTIVE:
            self.say(f"run {run_id} is still starting; try again when it runs", "warning")
        else:
            self.say(f"run {run_id} is {outcome.status}, not running", "warning")

    @work(group="ops", exit_on_error=False, description="resuming a run")
    async def resume_run(self, run_id: int) -> None:
        from mlmlab import ops
        from mlmlab.tui.screens.modals import ResumeDialog

        run = await asyncio.to_thread(self._read_run, run_id)
        problem = await asyncio.to_thread(ops.resume_problem, run)  # looks at the disk
        if problem == ops.STILL_ACTIVE:
            self.say(f"run {run_id} is {run['status']}: nothing to resume", "warning")
            return
        if problem == ops.FOLDER_GONE:
            self.say(f"run {run_id}: its folder {run['run_dir']} is gone, so there is no checkpoint to resume from", "error")
            return
        if problem == ops.NO_CHECKPOINT:
            self.say(f"run {run_id} has no checkpoint to resume from", "error")
            return
        sets = await self.push_screen_wait(ResumeDialog(run))
        if not sets:
            return
        launch = launch_resume(self.db_path, run_id, run["run_dir"], sets, cwd=self.cwd)
        self.launches[launch.pid] = launch
        launch.label = run["name"]
        self._watch_launch(launch)
        self.say(f"resuming run {run_id} '{run['name']}' from step {run['checkpoint_step']} (pid {launch.pid})")

    @work(group="ops", exit_on_error=False, description="deleting a run")
    async def delete_run(self, run_id: int) -> None:
        from mlmlab import ops
        from mlmlab.tui.formatting import fmt_tokens
        from mlmlab.tui.screens.modals import ConfirmDialog
        from mlmlab.tui.reader import file_size

        run = await asyncio.to_thread(self._read_run, run_id)
        if run["status"] in ACTIVE:
            self.say(f"run {run_id} is {run['status']}: stop it (s) before deleting", "warning")
            return
        size = await asyncio.to_thread(file_size, run["run_dir"])
        folder = f"its folder {run['run_dir']} ({fmt_tokens(size)}B)" if Path(run["run_dir"]).is_dir() else "no folder (already gone)"
        if not await self.push_screen_wait(ConfirmDialog(
                f"Delete run {run_id} '{run['name']}'?",
                f"This removes its metrics, samples and checkpoints from the database and {folder}. It cannot be undone.")):
            return

        await asyncio.to_thread(ops.delete_run, self.db_path, run_id, busy_timeout_ms=WRITE_BUSY_TIMEOUT_MS)
        self.say(f"deleted run {run_id} '{run['name']}'")

    @work(group="ops", exit_on_error=False, description="editing tags and note")
    async def edit_tags(self, run_id: int) -> None:
        from mlmlab.tui.screens.modals import TagsNoteDialog

        run = await asyncio.to_thread(self._read_run, run_id)
        answer = await self.push_screen_wait(TagsNoteDialog(run))
        if not answer:
            return
        tags, note = answer

        def save() -> None:
            with self._write_store() as store:
                store.set_tags(run_id, tags)
                store.set_note(run_id, note)

        await asyncio.to_thread(save)
        self.say(f"saved tags and note of run {run_id}")

    def open_explorer(self, run_id: int | None) -> None:
        """The mask explorer (its own module): loaded on demand, as it brings torch."""
        try:
            from mlmlab.tui.explorer import MaskExplorerScreen
        except ImportError as exc:
            self.say(f"the mask explorer is not installed in this build ({exc})", "warning")
            return
        except Exception as exc:  # noqa: BLE001 - a broken module must not take the app down
            self.say(f"the mask explorer failed to load: {describe_error(exc)}", "error")
            return
        self.push_screen(MaskExplorerScreen(self.db_path, run_id))

    def open_new_run(self) -> None:
        from mlmlab.tui.screens.form import NewRunScreen

        self.push_screen(NewRunScreen())

    def open_detail(self, run_id: int) -> None:
        from mlmlab.tui.screens.detail import RunDetailScreen

        self.push_screen(RunDetailScreen(run_id))

    def open_compare(self, run_ids: list[int]) -> None:
        from mlmlab.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(run_ids))


def make_app(db_path: Path, **options: Any) -> MlmlabApp:
    """The one factory the CLI and the tests build the app with."""
    return MlmlabApp(db_path, **options)


def run_app(db_path: Path) -> int:
    app = make_app(db_path, cwd=Path.cwd())
    app.run()
    return app.return_code or 0
