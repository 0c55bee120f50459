"""The training run: data, model, optimizer, the loop, evaluation, samples, checkpoints, the store.

Read top to bottom: `prepare_data` turns a config into token tensors, `build_model` and
`TrainState` hold everything a step needs, `Trainer.run` is the loop. The CLI (and torchrun) call
`Trainer`; the app only launches the CLI. Only rank 0 of a distributed run touches the database.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from mlmlab import checkpoints as ckpt
from mlmlab import cpu_attention, devices
from mlmlab.config import ExperimentConfig
from mlmlab.data import WindowSampler, load_corpus, split_text
from mlmlab.devices import memory_mb, resolve_device, resolve_precision
from mlmlab.errors import CheckpointError, MlmlabError, StoreError
from mlmlab.masking import KIND_KEEP, KIND_MASK, KIND_RANDOM, SPLIT_NAMES, mask_tokens, n_chosen_for, split_vector
from mlmlab.model import MaskedLM, ModelArgs
from mlmlab.store import Heartbeat, Store
from mlmlab.tokenizer import PAD_ID, CharTokenizer, build_tokenizer

EVAL_SEED = 1234  # fixed: held-out windows and masks are identical across runs and checkpoints
# Held-out batches are masked at BERT's standard rates whatever rate a recipe trains with (the
# quick preset trains at 40%), so evaluation always measures the same task and runs compare.
EVAL_MASKING = {"masking_prob": 0.15, "randomize_prob": 0.1, "no_change_prob": 0.1}
N_SAMPLE_PROMPTS = 4
FLUSH_SECONDS = 3.0
KIND_NAMES = {0: "none", KIND_MASK: "mask", KIND_RANDOM: "random", KIND_KEEP: "keep"}


class Reporter(Protocol):
    """How a run tells its caller about progress (a progress bar, log lines, or nothing)."""

    def start(self, total: int, initial: int) -> None: ...
    def update(self, step: int, stats: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def start(self, total: int, initial: int) -> None: ...
    def update(self, step: int, stats: dict[str, float]) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


# --- data ------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    tokenizer: CharTokenizer
    train_ids: torch.Tensor  # 1-D, on the device
    valid_ids: torch.Tensor  # 1-D, on the CPU (eval batches are built once from it)
    n_chars: int


def prepare_data(cfg: ExperimentConfig, tokenizer: CharTokenizer | None = None) -> PreparedData:
    """Load, split and encode the corpus. A resumed run passes its saved tokenizer."""
    text = load_corpus(cfg.data.source, cfg.data.max_chars)
    train_text, valid_text = split_text(text, cfg.data.valid_fraction, min_chars=cfg.train.seq_len + 1)
    tokenizer = tokenizer or build_tokenizer(cfg.data.tokenizer, train_text)
    encode = lambda s: torch.tensor(tokenizer.encode(s), dtype=torch.long)  # noqa: E731
    return PreparedData(tokenizer, encode(train_text), encode(valid_text), len(text))


# --- model and optimizer -----------------------------------------------------------------------


def model_args(cfg: ExperimentConfig, vocab_size: int) -> ModelArgs:
    m = cfg.model
    return ModelArgs(vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff, m.dropout, m.max_seq_len, PAD_ID)


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or Adam) with weight decay on matrices only, fused into one kernel per tensor.

    The fused kernels exist for CUDA and (since torch 2.4) the CPU; on a 2-core CPU they take the
    optimizer from about 2.5% of a seed-sized step (the `foreach` path, which the CPU runs as a loop
    of per-tensor ops) to about 0.5%. Elsewhere (MPS) `foreach` is used.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    wd = cfg.train.weight_decay if cfg.train.optimizer == "adamw" else 0.0
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs: dict[str, Any] = {"lr": cfg.train.lr, "betas": (0.9, 0.98), "eps": 1e-8}
    if device.type in ("cuda", "cpu"):
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = True
    cls = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


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


@dataclass
class StepOutput:
    loss: torch.Tensor
    correct: torch.Tensor
    n_chosen: int
    grad_norm: torch.Tensor
    split: torch.Tensor | None  # masking.split_vector, or None when not measured


class StepRunner:
    """One optimizer step: sample windows, mask, forward at the chosen positions, backward, update.

    Shared by training and `mlmlab bench`. No host synchronisation happens here: losses, accuracy
    and gradient norms stay tensors until the caller reads them every `log_every` steps.
    """

    def __init__(self, model: MaskedLM, optimizer, cfg: ExperimentConfig, device: torch.device,
                 precision: str, sampler: WindowSampler, mask_gen: torch.Generator,
                 no_mask_ids: torch.Tensor | None, compiled: Callable | None = None,
                 on_message: Callable[[str], None] = lambda text: None):
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        self.precision, self.sampler, self.mask_gen = precision, sampler, mask_gen
        self.no_mask_ids = no_mask_ids
        self.forward = model if compiled is None else compiled
        # torch.compile returns a wrapper holding the original module: the eager fallback.
        self.eager = getattr(compiled, "_orig_mod", None)
        self.compiled = self.eager is not None
        self._checked = not self.compiled
        self.vocab_size = model.args.vocab_size
        # CPU bf16 steps use the fused attention kernel: it is built (or loaded from its cache) here,
        # before torch.compile traces the model and before the run's clock starts.
        wants_kernel = device.type == "cpu" and precision == "bf16"
        self.on_message = on_message
        self.fused_attention_note = (None if not wants_kernel or self._prepare_kernel() else
                                     f"fused CPU attention unavailable ({cpu_attention.reason()}); using written-out attention")
        if self.fused_attention_note:
            on_message(self.fused_attention_note)
        devices.keep_freed_memory()  # every step reuses the last one's memory instead of faulting in new pages
        self.metrics = True  # per-step accuracy and masking split; off only to measure their cost

    def _prepare_kernel(self) -> bool:
        """cpu_attention.prepare(), saying so when it compiles the kernel (about 12 s with an empty cache)."""
        notice = threading.Timer(1.0, self.on_message, ["compiling mlmlab's fused CPU attention kernel "
                                                        "(first use; cached after that)"])
        notice.start()
        try:
            return cpu_attention.prepare()
        finally:
            notice.cancel()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def step(self, step: int, elapsed: float = 0.0) -> StepOutput:
        """Optimizer step number `step` (0-based), `elapsed` seconds of training into the run."""
        cfg = self.cfg
        seq_len = seq_len_at(step, cfg)
        ids = self.sampler.batch(cfg.train.batch_size, seq_len)
        n_chosen = self._n_chosen(ids)
        batch = mask_tokens(
            ids, vocab_size=self.vocab_size, masking_prob=cfg.mask.masking_prob,
            randomize_prob=cfg.mask.randomize_prob, no_change_prob=cfg.mask.no_change_prob,
            generator=self.mask_gen, no_mask_ids=self.no_mask_ids, n_chosen=n_chosen,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg, elapsed)
        with self.autocast():
            logits, loss = self._forward(batch)
        loss.backward()
        if cfg.train.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        else:
            grad_norm = _grad_norm(self.model)
        if cfg.train.skip_nonfinite and not torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutput(loss.detach(), torch.zeros((), device=ids.device), n_chosen, grad_norm, None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.metrics:
            return StepOutput(loss.detach(), loss.new_zeros(()), n_chosen, grad_norm, None)
        targets = ids.reshape(-1)[batch.positions]
        # max().indices: the same as argmax, three times faster on small bf16 CPU tensors (measured).
        correct = (logits.detach().max(-1).indices == targets).sum()
        return StepOutput(loss.detach(), correct, n_chosen, grad_norm, split_vector(batch, ids))

    def _forward(self, batch):
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new step: last step's graph outputs are done
        if self._checked:
            return self.forward(batch.inputs, batch.labels, batch.positions)
        try:  # the first compiled call compiles: a machine without a working compiler fails here
            out = self.forward(batch.inputs, batch.labels, batch.positions)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: train eagerly instead
            self.forward, self.compiled = self.eager, False
            self.on_message(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); training without it")
            out = self.forward(batch.inputs, batch.labels, batch.positions)
        self._checked = True
        return out

    def _n_chosen(self, ids: torch.Tensor) -> int | None:
        # Training windows hold no padding, so without no-mask tokens the count is static.
        if self.no_mask_ids is None:
            return n_chosen_for(ids.numel(), self.cfg.mask.masking_prob)
        return None


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy to the device once, before training: pinned and asynchronous on CUDA."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The global gradient norm when nothing clips: one foreach kernel, not one norm per tensor."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


COMPILE_PAYS_MINUTES = 10.0  # CPU compilation takes 30-60 s on 2 cores; it pays only on longer runs


def compile_decision(cfg: ExperimentConfig, device: torch.device) -> bool:
    """Whether `train.compile` means compile here.

    `auto`: always on CUDA. On a CPU, only for runs planned to last at least COMPILE_PAYS_MINUTES
    (`train.max_minutes`, or no time limit and at least 5000 steps): compiling takes 30-60 s on a
    2-core CPU (seconds once cached) and gains 4-21% per step, most at small sequence lengths
    (measured; see experiments/README-performance.md), so a 2-minute run would lose by it. Never on MPS.
    """
    mode, t = cfg.train.compile, cfg.train
    if mode != "auto":
        return mode == "on"
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return t.max_minutes >= COMPILE_PAYS_MINUTES or (not t.max_minutes and t.steps >= 5000)


def maybe_compile(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> Callable | None:
    """torch.compile with static shapes (the masked count per batch is fixed), where it pays.

    On CUDA, small single-process models also get CUDA graphs ("reduce-overhead"): the forward
    and backward graphs replay with one launch each, since kernel launches are what bounds small
    models there (the fused optimizer step stays outside). A failed compilation is caught by
    StepRunner, which then trains eagerly. Not measured here (no GPU in the session that wrote it).
    """
    if not compile_decision(cfg, device):
        return None
    small = sum(p.numel() for p in model.parameters()) < 50_000_000
    distributed = isinstance(model, torch.nn.parallel.DistributedDataParallel)  # DDP's hooks: no graphs
    mode = "reduce-overhead" if device.type == "cuda" and small and not distributed else None
    return torch.compile(model, dynamic=False, mode=mode)


# --- evaluation and samples ----------------------------------------------------------------------


@dataclass
class EvalSet:
    """Fixed held-out windows with fixed masks (EVAL_MASKING rates), built once from EVAL_SEED."""

    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (ids, inputs, labels)
    prompts: torch.Tensor  # (N_SAMPLE_PROMPTS, T) original ids
    prompt_inputs: torch.Tensor
    prompt_labels: torch.Tensor
    prompt_kinds: torch.Tensor


def build_eval_set(valid_ids: torch.Tensor, cfg: ExperimentConfig, vocab_size: int, no_mask_ids, device) -> EvalSet:
    gen = torch.Generator().manual_seed(EVAL_SEED)
    sampler = WindowSampler(valid_ids, gen)
    mask = lambda ids: mask_tokens(ids, vocab_size=vocab_size, generator=gen, no_mask_ids=no_mask_ids, **EVAL_MASKING)  # noqa: E731
    batches = []
    for _ in range(cfg.train.eval_batches):
        ids = sampler.batch(cfg.train.batch_size, cfg.train.seq_len)
        b = mask(ids)
        batches.append((to_device(ids, device), to_device(b.inputs, device), to_device(b.labels, device)))
    # Prompts: evenly spaced held-out windows, so they are readable text rather than random picks.
    T = cfg.train.seq_len
    starts = torch.linspace(0, valid_ids.numel() - T, N_SAMPLE_PROMPTS).long()
    prompts = torch.stack([valid_ids[s : s + T] for s in starts])
    p = mask(prompts)
    return EvalSet(batches, prompts, p.inputs, p.labels, p.kinds)


@torch.no_grad()
def evaluate(model: MaskedLM, evalset: EvalSet, precision: str, device: torch.device) -> dict[str, float]:
    """Loss and accuracy over the fixed held-out batches; sums stay on the device, one read at the end."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = torch.zeros((), device=device, dtype=torch.long)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for ids, inputs, labels in evalset.batches:
            logits, _ = model(inputs)
            chosen = labels != -100
            picked = logits[chosen].float()
            total_loss += F.cross_entropy(picked, labels[chosen], reduction="sum")
            correct += (picked.argmax(-1) == labels[chosen]).sum()
            count += chosen.sum()
    model.train()
    n = max(int(count), 1)
    return {"eval_loss": float(total_loss) / n, "eval_acc": int(correct) / n}


@torch.no_grad()
def sample_rows(model: MaskedLM, evalset: EvalSet, tokenizer: CharTokenizer, precision: str, device) -> list[dict]:
    """Predict the fixed prompts: for each position the original, what the model saw, its guess."""
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, _ = model(evalset.prompt_inputs.to(device))
    model.train()
    guesses = logits.argmax(-1).cpu()
    rows = []
    for i, original in enumerate(evalset.prompts.tolist()):
        shown = evalset.prompt_inputs[i].tolist()
        kinds = evalset.prompt_kinds[i].tolist()
        tokens, predicted = [], []
        for orig, seen, guess, kind in zip(original, shown, guesses[i].tolist(), kinds):
            filled = guess if kind else orig
            tokens.append([tokenizer.token(orig), tokenizer.token(seen), tokenizer.token(filled), KIND_NAMES[kind]])
            predicted.append(tokenizer.token(filled))
        chosen = [t for t in tokens if t[3] != "none"]
        rows.append({
            "prompt": i, "text": tokenizer.decode(original), "masked": tokenizer.decode(shown),
            "predicted": "".join(predicted), "tokens": tokens, "n_chosen": len(chosen),
            "n_correct": sum(t[0] == t[2] for t in chosen),
        })
    return rows


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # training seconds before this process started (resume) are included


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
        self._pending: list[dict] = []
        self._last_flush = time.monotonic()
        self._last_good_ckpt: int | None = None
        self._last_log_step = 0
        self._saved_handlers: dict[int, Any] = {}
        self._heartbeat: Heartbeat | None = None
        # What this process wrote, reported when it ends (so a test, or a person, can check the
        # database holds exactly that).
        self.rows_logged = self.samples_logged = self.checkpoints_written = 0

    # The loop ------------------------------------------------------------------------------------

    def run(self) -> str:
        """Train until steps, minutes or a stop; return the final status."""
        cfg = self.cfg
        torch.manual_seed(cfg.train.seed)
        tok = self.data.tokenizer
        model = MaskedLM(model_args(cfg, tok.vocab_size)).to(self.device)
        optimizer = build_optimizer(model, cfg, self.device)
        data_gen = torch.Generator(self.device).manual_seed(cfg.train.seed * 1000 + 17 + self.rank)
        mask_gen = torch.Generator(self.device).manual_seed(cfg.train.seed * 1000 + 29 + self.rank)
        progress = Progress()
        if self.resume_from:
            progress = self._restore(self.resume_from, model, optimizer, data_gen, mask_gen)
        no_mask = torch.tensor(tok.ids_of(cfg.mask.no_mask_tokens), dtype=torch.long, device=self.device)
        no_mask_ids = no_mask if no_mask.numel() else None
        train_model = self._wrap_distributed(model)
        sampler = WindowSampler(to_device(self.data.train_ids, self.device), data_gen)
        compiled = maybe_compile(train_model, cfg, self.device)
        runner = StepRunner(model, optimizer, cfg, self.device, self.precision, sampler, mask_gen, no_mask_ids,
                            compiled=train_model if compiled is None else compiled, on_message=self.reporter.message)
        evalset = build_eval_set(self.data.valid_ids, cfg, tok.vocab_size, no_mask_ids, self.device) if self.rank == 0 else None
        if self.store:
            self.store.start_run(self.run_id, device=str(self.device), precision=self.precision, n_params=model.n_params())
            self._heartbeat = Heartbeat(self.store.path, self.run_id).start()
        self._install_signal_handlers()
        self.reporter.start(cfg.train.steps, progress.step)
        model.train()
        self._progress = progress
        try:
            status = self._loop(model, optimizer, runner, evalset, progress, data_gen, mask_gen)
        except KeyboardInterrupt:
            self._finish("stopped", "aborted by a second interrupt: no final checkpoint")
            raise
        except StoreError as exc:
            # The database failed (disk full, file deleted or made read-only): keep the training
            # done so far in a checkpoint, which `--resume` finds on disk once the database is fixed.
            error = StoreError(f"{exc}; {self._rescue_checkpoint(model, optimizer, progress, data_gen, mask_gen)}")
            self._finish("failed", str(error))
            raise error from None
        except MlmlabError as exc:
            self._finish("failed", str(exc))
            raise
        except BaseException as exc:
            self._finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self._restore_signal_handlers()
        self._finish(status)
        return status

    def _finish(self, status: str, error: str | None = None) -> None:
        """Record the final status; pending metrics are written first. Best effort: if the database
        cannot take it, the run's row keeps `running` with a dead pid, which reads as crashed."""
        if self._heartbeat:
            self._heartbeat.stop()
        if self.store:
            try:
                self.flush(self._progress, force=True)
            except MlmlabError:
                pass
            try:
                self.store.finish_run(self.run_id, status, error)
            except MlmlabError as exc:
                if error is None:  # nothing else went wrong: this is the news
                    self.reporter.close()
                    raise
                self.reporter.message(f"could not record the run as {status}: {exc}")
            self.reporter.message(
                f"logged {self.rows_logged} metric rows, {self.samples_logged} samples and "
                f"{self.checkpoints_written} checkpoints"
            )
        self.reporter.close()

    def _rescue_checkpoint(self, model, optimizer, progress, data_gen, mask_gen) -> str:
        """A checkpoint written without the database; says what happened, for the error line."""
        if self.rank != 0:
            return "no checkpoint from this rank"
        if self._last_good_ckpt == progress.step:
            return f"the checkpoint at step {progress.step} is on disk"
        if not _finite(model):
            return f"no checkpoint written: the weights are not finite (last good checkpoint: {self._last_ckpt_text()})"
        path = ckpt.checkpoint_path(self.run_dir, progress.step)
        try:
            ckpt.save_checkpoint(self._payload(model, optimizer, progress, data_gen, mask_gen), path)
        except CheckpointError as exc:
            return f"{exc} (last good checkpoint: {self._last_ckpt_text()})"
        self._last_good_ckpt = progress.step
        return f"saved a checkpoint at step {progress.step} ({path}); `mlmlab run --resume {self.run_id}` finds it"

    def _last_ckpt_text(self) -> str:
        return f"step {self._last_good_ckpt}" if self._last_good_ckpt is not None else "none"

    def _loop(self, model, optimizer, runner, evalset, progress, data_gen, mask_gen) -> str:
        cfg, t = self.cfg, self.cfg.train
        started = time.monotonic() - progress.elapsed
        deadline = started + t.max_minutes * 60 if t.max_minutes else math.inf
        window = _Window(self.device, t.skip_nonfinite)
        status = "completed"
        last_eval: dict[str, float] = {}
        while progress.step < t.steps:
            step_tokens = t.batch_size * seq_len_at(progress.step, cfg) * self.world_size
            out = runner.step(progress.step, progress.elapsed)
            progress.step += 1
            progress.tokens += step_tokens
            window.add(out, step_tokens)
            last_elapsed = progress.elapsed  # what this step's learning rate was computed from
            progress.elapsed = time.monotonic() - started
            at_log = progress.step % t.log_every == 0 or progress.step == t.steps
            if at_log:
                stats = window.drain(progress.step)
                stats["lr"] = lr_at(progress.step - 1, cfg, last_elapsed)
                self._log(progress, stats)
                self.reporter.update(progress.step, {**stats, **last_eval})
            side_work = time.perf_counter()
            if self.rank == 0 and (progress.step % t.eval_every == 0 or progress.step == t.steps):
                last_eval = self._evaluate(model, evalset, progress)
            if progress.step % t.checkpoint_every == 0 and progress.step < t.steps:
                self._checkpoint(model, optimizer, progress, data_gen, mask_gen, last_eval)
            window.exclude(time.perf_counter() - side_work)
            if at_log or self.world_size == 1:
                reason = self._should_stop(deadline)
                if reason:
                    status = "completed" if reason == "time" else "stopped"
                    break
        if self.rank == 0 and progress.step % t.eval_every and progress.step < t.steps:
            last_eval = self._evaluate(model, evalset, progress)
        self._checkpoint(model, optimizer, progress, data_gen, mask_gen, last_eval)
        return status

    def _should_stop(self, deadline: float) -> str | None:
        reason = self._stop_reason
        if reason is None and time.monotonic() >= deadline:
            reason = "time"
        if self.world_size > 1:
            import torch.distributed as dist

            flag = torch.tensor([0 if reason is None else (1 if reason == "time" else 2)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            reason = {0: None, 1: "time", 2: "requested"}[int(flag)]
        return reason

    # Logging, evaluation, checkpoints --------------------------------------------------------------

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
        self._add_rows(progress, stats)
        self.flush(progress)

    def _add_rows(self, progress: Progress, stats: dict[str, float]) -> None:
        now = time.time()
        for name, value in stats.items():
            self._pending.append({
                "run_id": self.run_id, "step": progress.step, "tokens": progress.tokens,
                "elapsed": round(progress.elapsed, 3), "time": now, "name": name,
                "value": value if math.isfinite(value) else None,
            })

    def flush(self, progress: Progress, force: bool = False) -> None:
        """Write pending metric rows and the heartbeat in one transaction, every few seconds."""
        if not self.store or (not force and time.monotonic() - self._last_flush < FLUSH_SECONDS):
            return
        beat = {"run_id": self.run_id, "step": progress.step, "tokens": progress.tokens, "elapsed": progress.elapsed}
        self.store.add_metrics(self._pending, heartbeat=beat)
        self.rows_logged += len(self._pending)
        self._pending = []
        self._last_flush = time.monotonic()
        if self._stop_reason is None and self.store.stop_requested(self.run_id):
            self._stop_reason = "requested"  # the app asked (works across hosts, unlike a signal)

    def _evaluate(self, model, evalset: EvalSet, progress: Progress) -> dict[str, float]:
        figures = evaluate(model, evalset, self.precision, self.device)
        self._add_rows(progress, figures)
        if self.store:
            rows = sample_rows(model, evalset, self.data.tokenizer, self.precision, self.device)
            self.store.add_samples([{"run_id": self.run_id, "step": progress.step, **row} for row in rows])
            self.samples_logged += len(rows)
        self.flush(progress, force=True)
        self.reporter.message(f"step {progress.step}: eval loss {figures['eval_loss']:.3f}, accuracy {figures['eval_acc']:.1%}")
        return figures

    def _payload(self, model, optimizer, progress, data_gen, mask_gen) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": progress.step, "tokens": progress.tokens, "elapsed": progress.elapsed,
            "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "mask": mask_gen.get_state()},
            "config": self.cfg.to_dict(), "vocab": self.data.tokenizer.to_dict(),
            "model_args": model.args.to_dict(), "precision": self.precision,
        }

    def _checkpoint(self, model, optimizer, progress, data_gen, mask_gen, last_eval) -> None:
        """Write checkpoint `progress.step` and record it.

        Order matters for a kill at any moment: the metrics up to this step are committed first
        (so a resume from this checkpoint finds its history whole), then the file appears
        atomically, then its row. Weights that are no longer finite are never saved: the run
        fails naming the last good checkpoint instead.
        """
        if self.rank != 0:
            return
        if not _finite(model):
            raise NonFiniteLoss(
                f"weights became non-finite between step {self._last_log_step + 1} and step {progress.step} "
                f"(last good checkpoint: {self._last_ckpt_text()}); lower train.lr or set train.skip_nonfinite = true"
            )
        self.flush(progress, force=True)
        if not Path(self.run_dir).is_dir():
            self.reporter.message(f"the run folder {self.run_dir} was missing (deleted?): writing checkpoints there again")
            if self.store:
                self.store.drop_missing_checkpoints(self.run_id)
        path = ckpt.checkpoint_path(self.run_dir, progress.step)
        try:
            size = ckpt.save_checkpoint(self._payload(model, optimizer, progress, data_gen, mask_gen), path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; last good checkpoint: {self._last_ckpt_text()}") from None
        self._last_good_ckpt = progress.step
        self.checkpoints_written += 1
        if self.store:
            self.store.add_checkpoint({
                "run_id": self.run_id, "step": progress.step, "path": str(path), "bytes": size,
                "tokens": progress.tokens, "created_at": time.time(),
                "eval_loss": last_eval.get("eval_loss"), "eval_acc": last_eval.get("eval_acc"),
            })
        self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        """Keep the newest `keep_checkpoints` files. The row goes before the file: a kill in between
        leaves an unlisted file (removed by the next prune), never a row pointing at nothing."""
        keep = self.cfg.train.keep_checkpoints
        files = ckpt.checkpoint_files(self.run_dir)
        for old in files[: -keep] if keep else []:
            if self.store:
                self.store.remove_checkpoint(self.run_id, ckpt.step_of(old))
            old.unlink(missing_ok=True)

    def _restore(self, payload, model, optimizer, data_gen, mask_gen) -> Progress:
        try:
            model.load_state_dict(payload["model"])
            if "optimizer" in payload:
                optimizer.load_state_dict(payload["optimizer"])
            rng = payload.get("rng", {})
            if "torch" in rng:
                torch.set_rng_state(rng["torch"])
            if "data" in rng:
                data_gen.set_state(rng["data"])
                mask_gen.set_state(rng["mask"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"checkpoint at step {payload['step']} does not fit this run's model ({first})") from None
        self._last_good_ckpt = payload["step"]
        self._last_log_step = payload["step"]
        return Progress(payload["step"], payload.get("tokens", 0), payload.get("elapsed", 0.0))

    # Processes and signals --------------------------------------------------------------------------

    def _wrap_distributed(self, model: MaskedLM):
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def _install_signal_handlers(self) -> None:
        """Ctrl-C or SIGTERM: finish the step, checkpoint, status `stopped`. A second one aborts."""

        def request_stop(signum, frame):
            if self._stop_reason:
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
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


class NonFiniteLoss(MlmlabError):
    pass


class _Window:
    """Sums of step outputs between log lines, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device, skip_nonfinite: bool):
        self.device = device
        self.skip_nonfinite = skip_nonfinite
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)
        self.grad = torch.zeros((), device=self.device)
        self.split: torch.Tensor | None = None  # summed split_vector of the steps that measured it
        self.steps = self.chosen = self.tokens = 0
        self.started = time.perf_counter()
        self.excluded = 0.0  # seconds spent on evaluation and checkpoints inside this window
        self.bad_steps: list[torch.Tensor] = []

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def add(self, out: StepOutput, tokens: int) -> None:
        finite = torch.isfinite(out.loss)
        self.loss += torch.where(finite, out.loss, 0.0) if self.skip_nonfinite else out.loss
        self.correct += out.correct
        self.grad += out.grad_norm.float()
        if out.split is not None:
            self.split = out.split if self.split is None else self.split + out.split
        self.steps += 1
        self.chosen += out.n_chosen or 0
        self.tokens += tokens
        self.bad_steps.append(~finite)

    def drain(self, step: int) -> dict[str, float]:
        """Read the window's sums (the one host sync every log_every steps) and start a new window."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # steps are queued asynchronously: wait, then time
        seconds = max(time.perf_counter() - self.started - self.excluded, 1e-9)
        bad = torch.stack(self.bad_steps).tolist()
        n_bad = sum(bad)
        good = max(self.steps - n_bad, 1) if self.skip_nonfinite else self.steps
        loss = float(self.loss) / good
        stats = {
            "train_loss": loss,
            "train_acc": float(self.correct) / max(self.chosen, 1),
            "grad_norm": float(self.grad) / self.steps,
            "tokens_per_s": self.tokens / seconds,
            "step_ms": 1000 * seconds / self.steps,
        }
        if self.split is not None:
            stats.update(zip(SPLIT_NAMES, (self.split / max(self.steps - n_bad, 1)).tolist()))
        if self.skip_nonfinite:
            stats["skipped_steps"] = float(n_bad)
        elif n_bad:
            stats["bad_step"] = step - self.steps + 1 + bad.index(True)
        self.reset()
        return stats
