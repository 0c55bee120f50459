"""The training run: the loop, its checkpoints, signals and DDP.

Read top to bottom: `Trainer.run` builds the `TrainState` (model, optimizer, step runner,
progress, generators) and the held-out set, then `_loop` steps until the step budget, the time
limit or a stop request. The CLI (and torchrun) call `Trainer`; the app only launches the CLI. Only
rank 0 of a distributed run touches the database, through its `Recorder`.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlmlab import checkpoints as ckpt
from mlmlab.config import ExperimentConfig
from mlmlab.devices import memory_mb
from mlmlab.engine import distributed, schedule
from mlmlab.engine.data import PreparedData, mask_strategy, no_mask_ids
from mlmlab.engine.evaluation import EvalSet, build_eval_set, evaluate, sample_rows, token_chars
from mlmlab.engine.metrics import MetricWindow
from mlmlab.engine.recorder import Recorder
from mlmlab.engine.reporting import Reporter, SilentReporter
from mlmlab.engine.state import Progress, TrainState, build_state
from mlmlab.errors import CheckpointError, MlmlabError, StoreError
from mlmlab.model import MaskedLM
from mlmlab.paths import write_text_atomic
from mlmlab.store import Store
from mlmlab.store.liveness import this_host


# Under DDP the stop flag is agreed on at log steps and at least this often (one tiny all-reduce and a
# host sync): torchrun gives its workers 30 s between SIGTERM and SIGKILL to checkpoint and exit.
STOP_CHECK_EVERY = 10


class NonFiniteLoss(MlmlabError):
    pass


@dataclass
class Trainer:
    """Runs (or resumes) one training run recorded in `store` under `run_id`."""

    cfg: ExperimentConfig
    store: Store | None  # None on ranks other than 0
    run_id: int | None
    run_dir: Path
    data: PreparedData
    device: torch.device
    precision: str
    reporter: Reporter = field(default_factory=SilentReporter)
    resume_from: dict | None = None  # a loaded checkpoint
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        self._stop_reason: str | None = None
        self._last_good_ckpt: int | None = None
        self._last_log_step = 0
        self._saved_handlers: dict[int, Any] = {}
        self._signals_seen: set[int] = set()
        self._agreed_elapsed = 0.0  # under DDP: the clock all ranks agreed on at the last stop check
        self.recorder = Recorder(self.store, self.run_id) if self.store else None
        self._peer_watch: distributed.PeerWatch | None = None  # rank 0 of a DDP run
        self.state: TrainState | None = None

    # The loop ------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train until steps, minutes or a stop; return the final status."""
        cfg, tok = self.cfg, self.data.tokenizer
        no_mask = no_mask_ids(tok, cfg, self.device)
        state = build_state(cfg, self.device, self.precision, self.data.train_ids, tok.vocab_size, no_mask,
                            rank=self.rank, world_size=self.world_size, checkpoint=self.resume_from,
                            wrap=self._wrap_distributed, on_message=self.reporter.message,
                            strategy=mask_strategy(tok, cfg, self.device))
        self._agreed_elapsed = state.progress.elapsed
        if self.resume_from:
            self._last_good_ckpt = self._last_log_step = state.progress.step
        evalset = build_eval_set(self.data.valid_ids, cfg, tok.vocab_size, no_mask, self.device,
                                 token_chars(tok, self.device)) if self.rank == 0 else None
        ranks = distributed.gather_ranks(self.device) if self.world_size > 1 else None
        if self.recorder:
            self.recorder.start(str(self.device), self.precision, state.model.n_params(),
                                world_size=self.world_size, global_batch=self.global_batch(), ranks=ranks)
            self._peer_watch = distributed.PeerWatch(self.world_size, self.recorder.peer_failed).start()
            self._write_tokenizer_file()
        self._install_signal_handlers()
        self.reporter.start(cfg.train.steps, state.progress.step)
        self.state = state
        try:
            status = self._loop(state, evalset)
        except KeyboardInterrupt:
            self._finish("stopped", "aborted by a second interrupt: no final checkpoint")
            raise
        except StoreError as exc:
            # The database failed (disk full, file deleted or made read-only): keep the training
            # done so far in a checkpoint, which `--resume` finds on disk once the database is fixed.
            error = StoreError(f"{exc}; {self._rescue_checkpoint(state)}")
            self._finish("failed", str(error))
            raise error from None
        except BaseException as exc:
            self._finish(*self._failure(exc, state))
            raise
        finally:
            self._restore_signal_handlers()
        self._finish(status)
        return status

    def _loop(self, state: TrainState, evalset: EvalSet | None) -> str:
        cfg, t = self.cfg, self.cfg.train
        progress = state.progress
        started = time.monotonic() - progress.elapsed
        deadline = started + t.max_minutes * 60 if t.max_minutes else math.inf
        window = MetricWindow(self.device, t.skip_nonfinite, self.world_size)
        status = "completed"
        last_eval: dict[str, float] = {}
        while progress.step < t.steps:
            # Under DDP the learning rate must be the same on every rank: a time-limited schedule
            # reads the clock the ranks last agreed on, not each rank's own.
            lr_elapsed = progress.elapsed if self.world_size == 1 else self._agreed_elapsed
            out = state.runner.step(progress.step, lr_elapsed)
            step_tokens = out.tokens * self.world_size
            progress.step += 1
            progress.tokens += step_tokens
            window.add(out, step_tokens)
            last_elapsed = lr_elapsed  # what this step's learning rate was computed from
            progress.elapsed = time.monotonic() - started
            at_log = progress.step % t.log_every == 0 or progress.step == t.steps
            if at_log:
                stats = window.drain(progress.step)
                stats["lr"] = schedule.lr_at(progress.step - 1, cfg, last_elapsed)
                stage = schedule.stage_at(progress.step - 1, cfg)  # this window's last step: the curriculum on the plots
                stats["seq_len"] = float(stage.seq_len)
                if schedule.batch_varies(cfg):
                    stats["batch_size"] = float(stage.batch_size)
                self._log(progress, stats)
                self.reporter.update(progress.step, {**stats, **last_eval})
            side_work = time.perf_counter()
            if self.rank == 0 and (progress.step % t.eval_every == 0 or progress.step == t.steps):
                last_eval = self._evaluate(state.model, evalset, progress)
            if progress.step % t.checkpoint_every == 0 and progress.step < t.steps:
                self._checkpoint(state, last_eval)
            window.exclude(time.perf_counter() - side_work)
            if at_log or self.world_size == 1 or progress.step % STOP_CHECK_EVERY == 0:
                reason = self._should_stop(deadline, progress)
                if reason:
                    status = "completed" if reason == "time" else "stopped"
                    break
        if self.rank == 0 and progress.step % t.eval_every and progress.step < t.steps:
            last_eval = self._evaluate(state.model, evalset, progress)
        self._checkpoint(state, last_eval)
        return status

    def _should_stop(self, deadline: float, progress: Progress) -> str | None:
        """Why to stop now, if at all. Under DDP one collective agrees on it (any rank's request
        stops all: SIGTERM from torchrun or `mlmlab stop` may reach one rank first) and on the clock."""
        reason = self._stop_reason
        if reason is None and time.monotonic() >= deadline:
            reason = "time"
        if self.world_size > 1:
            code = 0 if reason is None else (1 if reason == "time" else 2)
            agreed = distributed.agree(torch.tensor([code, progress.elapsed], dtype=torch.float64, device=self.device))
            code, self._agreed_elapsed = agreed.tolist()
            reason = {0: None, 1: "time", 2: "requested"}[int(code)]
        return reason

    def _failure(self, exc: BaseException, state: TrainState) -> tuple[str, str]:
        """How an exception ends the run: (status, error text).

        Alone, or for a rank's own error: `failed` with its text; a rank other than 0 also leaves
        the text for rank 0. Rank 0 whose collective failed because a peer went away records that
        peer's text (`failed`), or, when none left a word (it was killed), `crashed`, with a
        checkpoint of the last complete step so the run resumes from there.
        """
        own = str(exc) if isinstance(exc, MlmlabError) else f"{type(exc).__name__}: {exc}"
        if self.world_size == 1:
            return "failed", own
        if self.rank != 0:
            distributed.publish_failure(self.rank, f"rank {self.rank} ({this_host()}): {own}")
            return "failed", own
        if not distributed.is_peer_loss(exc):
            return "failed", own
        peer = distributed.peer_failure(self.world_size, wait_s=distributed.PEER_WAIT_S)
        if peer:
            return "failed", peer
        first_line = (own.splitlines() or [own])[0][:300]
        return "crashed", f"another rank stopped answering ({first_line}); {self._rescue_checkpoint(state)}"

    def _finish(self, status: str, error: str | None = None) -> None:
        """Record the final status; pending metrics are written first. Best effort: if the database
        cannot take it, the run's row keeps `running` with a dead pid, which reads as crashed."""
        if self._peer_watch:
            self._peer_watch.stop()
        if self.recorder:
            self.recorder.stop_heartbeat()
            try:
                self.flush(self.state.progress, force=True)
            except MlmlabError:
                pass
            try:
                self.recorder.finish(status, error)
            except MlmlabError as exc:
                if error is None:  # nothing else went wrong: this is the news
                    self.reporter.close()
                    raise
                self.reporter.message(f"could not record the run as {status}: {exc}")
            self.reporter.message(self.recorder.summary())
        self.reporter.close()

    # Logging and evaluation -------------------------------------------------------------------------

    def _log(self, progress: Progress, stats: dict[str, float]) -> None:
        if not math.isfinite(stats["train_loss"]) and not self.cfg.train.skip_nonfinite:
            raise NonFiniteLoss(
                f"loss became {stats['train_loss']} at step {stats.pop('bad_step', progress.step)} "
                f"(last good checkpoint: {self._last_ckpt_text()}); lower train.lr or set train.skip_nonfinite = true"
            )
        stats.pop("bad_step", None)
        self._last_log_step = progress.step
        if self.rank != 0:
            return
        stats["mem_mb"] = memory_mb(self.device)
        if self.recorder:
            self.recorder.add_rows(progress, stats)
        self.flush(progress)

    def flush(self, progress: Progress, force: bool = False) -> None:
        """Write pending metric rows and the heartbeat (every few seconds), then look for a stop request."""
        if not self.recorder or not self.recorder.flush(progress, force):
            return
        if self._stop_reason is None and self.recorder.stop_requested():
            self._stop_reason = "requested"  # the app asked (works across hosts, unlike a signal)

    def _evaluate(self, model: MaskedLM, evalset: EvalSet, progress: Progress) -> dict[str, float]:
        figures = evaluate(model, evalset, self.precision, self.device)
        if self.recorder:
            self.recorder.add_rows(progress, figures)
            self.recorder.add_samples(progress, sample_rows(model, evalset, self.data.tokenizer, self.precision, self.device))
        self.flush(progress, force=True)
        bpc = f", {figures['eval_bpc']:.3f} bits/char" if "eval_bpc" in figures else ""
        self.reporter.message(f"step {progress.step}: eval loss {figures['eval_loss']:.3f}, accuracy {figures['eval_acc']:.1%}{bpc}")
        return figures

    # Checkpoints ----------------------------------------------------------------------------------

    def _write_tokenizer_file(self) -> None:
        """A subword run's `tokenizer.json` beside its checkpoints, for tools outside mlmlab (every
        checkpoint also carries it). Saving it is a convenience: a failure is said, not fatal."""
        tokenizer = self.data.tokenizer
        if tokenizer.kind == "char":
            return
        from mlmlab.subword import vocab_dump

        try:
            Path(self.run_dir).mkdir(parents=True, exist_ok=True)
            write_text_atomic(Path(self.run_dir) / "tokenizer.json", vocab_dump(tokenizer))
        except OSError as exc:
            self.reporter.message(f"could not write tokenizer.json in {self.run_dir} ({exc.strerror})")

    def _checkpoint(self, state: TrainState, last_eval: dict[str, float]) -> None:
        """Write checkpoint `progress.step` and record it.

        Order matters for a kill at any moment: the metrics up to this step are committed first
        (so a resume from this checkpoint finds its history whole), then the file appears
        atomically, then its row. Weights that are no longer finite are never saved: the run
        fails naming the last good checkpoint instead.
        """
        if self.rank != 0:
            return
        progress = state.progress
        if not _finite(state.model):
            raise NonFiniteLoss(
                f"weights became non-finite between step {self._last_log_step + 1} and step {progress.step} "
                f"(last good checkpoint: {self._last_ckpt_text()}); lower train.lr or set train.skip_nonfinite = true"
            )
        self.flush(progress, force=True)
        if not Path(self.run_dir).is_dir():
            self.reporter.message(f"the run folder {self.run_dir} was missing (deleted?): writing checkpoints there again")
            if self.recorder:
                self.recorder.drop_missing_checkpoints()
        path = ckpt.checkpoint_path(self.run_dir, progress.step)
        try:
            size = ckpt.save_checkpoint(state.payload(self.cfg, self.data.tokenizer, self.precision), path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; last good checkpoint: {self._last_ckpt_text()}") from None
        self._last_good_ckpt = progress.step
        if self.recorder:
            self.recorder.add_checkpoint(progress, path, size, last_eval)
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        """Keep the newest `keep_checkpoints` files. The row goes before the file: a kill in between
        leaves an unlisted file (removed by the next prune), never a row pointing at nothing."""
        keep = self.cfg.train.keep_checkpoints
        files = ckpt.checkpoint_files(self.run_dir)
        for old in files[: -keep] if keep else []:
            if self.recorder:
                self.recorder.remove_checkpoint(ckpt.step_of(old))
            old.unlink(missing_ok=True)

    def _rescue_checkpoint(self, state: TrainState) -> str:
        """A checkpoint written without the database; says what happened, for the error line."""
        progress = state.progress
        if self.rank != 0:
            return "no checkpoint from this rank"
        if self._last_good_ckpt == progress.step:
            return f"the checkpoint at step {progress.step} is on disk"
        if not _finite(state.model):
            return f"no checkpoint written: the weights are not finite (last good checkpoint: {self._last_ckpt_text()})"
        path = ckpt.checkpoint_path(self.run_dir, progress.step)
        try:
            ckpt.save_checkpoint(state.payload(self.cfg, self.data.tokenizer, self.precision), path)
        except CheckpointError as exc:
            return f"{exc} (last good checkpoint: {self._last_ckpt_text()})"
        self._last_good_ckpt = progress.step
        return f"saved a checkpoint at step {progress.step} ({path}); `mlmlab run --resume {self.run_id}` finds it"

    def _last_ckpt_text(self) -> str:
        return f"step {self._last_good_ckpt}" if self._last_good_ckpt is not None else "none"

    # Processes and signals --------------------------------------------------------------------------

    def global_batch(self) -> int:
        """Sequences per optimizer step over all ranks: batch_size x grad_accum_steps x world size."""
        t = self.cfg.train
        return t.batch_size * t.grad_accum_steps * self.world_size

    def _wrap_distributed(self, model: MaskedLM):
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _install_signal_handlers(self) -> None:
        """Ctrl-C or SIGTERM: finish the step, checkpoint, status `stopped`. A second one aborts."""

        def request_stop(signum, frame):
            # The same signal again aborts. Another one does not: Ctrl-C under torchrun reaches a
            # rank twice, as SIGINT from the terminal and as SIGTERM from torchrun passing it on.
            if signum in self._signals_seen:
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            self._signals_seen.add(signum)
            if self._stop_reason:
                return
            self._stop_reason = "signal"
            self.reporter.message("stopping after this step (again to abort)")

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._saved_handlers[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. a test calling run() in a thread)
                pass

    def _restore_signal_handlers(self) -> None:
        """Give the signals back to whoever had them (a caller that trains in-process keeps its Ctrl-C)."""
        for sig, handler in self._saved_handlers.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except ValueError:
                pass
        self._saved_handlers.clear()


def _finite(model: torch.nn.Module) -> bool:
    """Whether every weight is finite: one reduction and one host sync, done only at checkpoints."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
