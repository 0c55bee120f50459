"""One optimizer step, and what it is built from: the optimizer, the compile decision, device copies.

Shared by training, `mlmlab bench` and the experiments. No host synchronisation happens in a step:
losses, accuracy and gradient norms stay tensors until the metric window reads them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mlmlab import cpu_attention, devices
from mlmlab.config import ExperimentConfig
from mlmlab.data import WindowSampler
from mlmlab.engine import schedule
from mlmlab.engine.distributed import micro_seed
from mlmlab.masking import mask_tokens, n_chosen_for, split_vector
from mlmlab.masking_strategies import WordMasking
from mlmlab.model import MaskedLM, ModelArgs
from mlmlab.tokenizer import PAD_ID

KERNEL_NOTICE_S = 4.0  # loading the kernel from its cache takes about 2 s (importing inductor); compiling about 12
KERNEL_NOTICE = "preparing mlmlab's fused CPU attention kernel (compiled on first use, about 12 s; cached after that)"


def model_args(cfg: ExperimentConfig, vocab_size: int) -> ModelArgs:
    m = cfg.model
    return ModelArgs(vocab_size, m.d_model, m.n_layers, m.n_heads, m.d_ff, m.dropout, m.max_seq_len, PAD_ID)


def build_optimizer(model: torch.nn.Module, cfg: ExperimentConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (or Adam) with weight decay on matrices only, fused into one kernel per tensor.

    The fused kernels exist for CUDA and (since torch 2.4) the CPU, where the `foreach` path runs as
    a loop of per-tensor ops (measured: experiments/README-performance.md). Elsewhere (MPS) `foreach`.
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


@dataclass
class StepOutput:
    loss: torch.Tensor
    correct: torch.Tensor
    n_chosen: int
    grad_norm: torch.Tensor
    split: torch.Tensor | None  # masking.split_vector, or None when not measured
    tokens: int = 0  # tokens this step trained on (the curriculum's batch size × seq_len)


class StepRunner:
    """One optimizer step: sample windows, mask, forward at the chosen positions, backward, update."""

    def __init__(self, model: MaskedLM, optimizer, cfg: ExperimentConfig, device: torch.device,
                 precision: str, sampler: WindowSampler, mask_gen: torch.Generator,
                 no_mask_ids: torch.Tensor | None, compiled: Callable | None = None,
                 on_message: Callable[[str], None] = lambda text: None, strategy: WordMasking | None = None,
                 rank: int = 0, world_size: int = 1, ddp: torch.nn.Module | None = None):
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        # Micro-batch `rank * accum + j` of each step is this rank's j-th (distributed.micro_seed).
        self.rank, self.world_size = rank, world_size
        self.accum = cfg.train.grad_accum_steps if cfg is not None else 1  # no config: a runner built only to time or check kernels
        self.ddp = ddp  # the DistributedDataParallel wrapper, for no_sync
        self.strategy = strategy  # mask.strategy: None = token
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
        """cpu_attention.prepare(), saying so when it takes long: compiling takes about 12 s with an empty
        cache, while loading it from the cache takes about 2 s (importing inductor), more on a busy machine."""
        notice = threading.Timer(KERNEL_NOTICE_S, self.on_message, [KERNEL_NOTICE])
        notice.start()
        try:
            return cpu_attention.prepare()
        finally:
            notice.cancel()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def step(self, step: int, elapsed: float = 0.0) -> StepOutput:
        """Optimizer step number `step` (0-based), `elapsed` seconds of training into the run.

        `train.grad_accum_steps` micro-batches, each a forward and a backward of its loss / accum;
        under DDP the gradients are all-reduced on the last one only (`no_sync` before it), then
        one clip and one optimizer step. The learning rate counts optimizer steps.
        """
        cfg = self.cfg
        stage = schedule.stage_at(step, cfg)  # the curriculum's batch size and seq_len, per micro-batch
        for group in self.optimizer.param_groups:
            group["lr"] = schedule.lr_at(step, cfg, elapsed)
        sums = _MicroSums()
        for micro in range(self.accum):
            self._seed_generators(step, self.rank * self.accum + micro)
            with self._sync(micro == self.accum - 1):
                self._micro_step(stage, sums)
        loss = sums.loss / self.accum if self.accum > 1 else sums.loss
        if cfg.train.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        else:
            grad_norm = _grad_norm(self.model)
        # Under DDP every rank must take the same decision: the all-reduced gradient's norm is the
        # same everywhere (a non-finite loss on any rank makes it non-finite), a rank's loss is not.
        finite = torch.isfinite(grad_norm) if self.world_size > 1 else torch.isfinite(loss)
        if cfg.train.skip_nonfinite and not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return StepOutput(loss, torch.zeros((), device=self.device), sums.n_chosen, grad_norm, None, sums.tokens)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not self.metrics:
            return StepOutput(loss, loss.new_zeros(()), sums.n_chosen, grad_norm, None, sums.tokens)
        split = sums.split / self.accum if self.accum > 1 else sums.split
        return StepOutput(loss, sums.correct, sums.n_chosen, grad_norm, split, sums.tokens)

    def _micro_step(self, stage: schedule.Stage, sums: "_MicroSums") -> None:
        """One micro-batch: sample, mask, forward, backward (gradients add up in `.grad`)."""
        cfg = self.cfg
        ids = self.sampler.batch(*stage)
        n_chosen = self._n_chosen(ids)
        batch = mask_tokens(
            ids, vocab_size=self.vocab_size, masking_prob=cfg.mask.masking_prob,
            randomize_prob=cfg.mask.randomize_prob, no_change_prob=cfg.mask.no_change_prob,
            generator=self.mask_gen, no_mask_ids=self.no_mask_ids, n_chosen=n_chosen, strategy=self.strategy,
        )
        with self.autocast():
            logits, loss = self._forward(batch)
        (loss / self.accum if self.accum > 1 else loss).backward()
        sums.add_loss(loss.detach(), n_chosen, ids.numel())
        if self.metrics:
            targets = ids.reshape(-1)[batch.positions]
            # max().indices: the same as argmax, three times faster on small bf16 CPU tensors (measured).
            sums.add_accuracy((logits.detach().max(-1).indices == targets).sum(), split_vector(batch, ids))

    def _seed_generators(self, step: int, index: int) -> None:
        """Windows and masks of micro-batch `index` of `step`: the same on any rank, in any run."""
        seed = self.cfg.train.seed
        self.sampler.generator.manual_seed(micro_seed(seed, step, index, 0))
        self.mask_gen.manual_seed(micro_seed(seed, step, index, 1))

    def _sync(self, last: bool):
        """DDP's `no_sync` on all but the last micro-batch: one gradient all-reduce per optimizer step."""
        return self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()

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


class _MicroSums:
    """What a step's micro-batches add up to (tensors stay on the device: no host sync)."""

    def __init__(self):
        self.loss = self.correct = self.split = None
        self.n_chosen: int | None = 0
        self.tokens = 0

    def add_loss(self, loss: torch.Tensor, n_chosen: int | None, tokens: int) -> None:
        # A copy: under CUDA graphs the loss is a view of the graph's output, which the next
        # micro-batch's replay overwrites.
        self.loss = loss.clone() if self.loss is None else self.loss + loss
        self.n_chosen = None if n_chosen is None or self.n_chosen is None else self.n_chosen + n_chosen
        self.tokens += tokens

    def add_accuracy(self, correct: torch.Tensor, split: torch.Tensor) -> None:
        self.correct = correct if self.correct is None else self.correct + correct
        self.split = split if self.split is None else self.split + split


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
