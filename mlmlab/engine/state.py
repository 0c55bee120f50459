"""TrainState: what a step and a checkpoint need, built one way for training, `mlmlab bench` and the experiments.

A checkpoint is this state written out (`TrainState.payload`) and a resume reads it back
(`restore`) before the step runner is built, so a resumed run continues from the same weights,
optimizer moments and random streams.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mlmlab.config import ExperimentConfig
from mlmlab.data import WindowSampler
from mlmlab.engine.step import StepRunner, build_optimizer, maybe_compile, model_args, to_device
from mlmlab.errors import CheckpointError
from mlmlab.masking_strategies import WordMasking
from mlmlab.model import MaskedLM
from mlmlab.tokenizer import CharTokenizer


@dataclass
class Progress:
    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0  # training seconds before this process started (resume) are included


@dataclass
class TrainState:
    model: MaskedLM  # the plain module (its DDP wrapper, if any, is inside `runner`)
    optimizer: torch.optim.Optimizer
    runner: StepRunner
    progress: Progress
    data_gen: torch.Generator  # draws the training windows
    mask_gen: torch.Generator  # draws the masks

    def payload(self, cfg: ExperimentConfig, tokenizer: CharTokenizer, precision: str) -> dict[str, Any]:
        """The checkpoint of this state: everything `restore` and the predictor read back."""
        progress = self.progress
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": progress.step, "tokens": progress.tokens, "elapsed": progress.elapsed,
            "rng": {"torch": torch.get_rng_state(), "data": self.data_gen.get_state(), "mask": self.mask_gen.get_state()},
            "config": cfg.to_dict(), "vocab": tokenizer.to_dict(),
            "model_args": self.model.args.to_dict(), "precision": precision,
        }


def build_state(cfg: ExperimentConfig, device: torch.device, precision: str, train_ids: torch.Tensor, vocab_size: int,
                no_mask_ids: torch.Tensor | None = None, *, rank: int = 0, world_size: int = 1,
                checkpoint: dict | None = None, wrap: Callable[[MaskedLM], torch.nn.Module] | None = None,
                on_message: Callable[[str], None] = lambda text: None,
                strategy: WordMasking | None = None) -> TrainState:
    """Seed, build the model, optimizer and generators, restore `checkpoint`, then the step runner.

    `wrap` (DistributedDataParallel under torchrun) wraps the model the runner steps. The step
    runner reseeds the generators for every micro-batch from (seed, step, micro-batch index), so
    each rank draws its own windows and masks and a checkpoint resumes under any world size.
    """
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = MaskedLM(model_args(cfg, vocab_size)).to(device)
    optimizer = build_optimizer(model, cfg, device)
    data_gen = torch.Generator(device).manual_seed(cfg.train.seed * 1000 + 17 + rank)
    mask_gen = torch.Generator(device).manual_seed(cfg.train.seed * 1000 + 29 + rank)
    progress = restore(checkpoint, model, optimizer, data_gen, mask_gen) if checkpoint else Progress()
    if rank:  # dropout draws from the global generator: each rank its own (rank 0 keeps the checkpoint's)
        torch.manual_seed(cfg.train.seed * 1000 + 7919 * rank + progress.step)
    train_model = wrap(model) if wrap else model
    sampler = WindowSampler(to_device(train_ids, device), data_gen)
    compiled = maybe_compile(train_model, cfg, device)
    runner = StepRunner(model, optimizer, cfg, device, precision, sampler, mask_gen, no_mask_ids,
                        compiled=train_model if compiled is None else compiled, on_message=on_message,
                        strategy=strategy, rank=rank, world_size=world_size,
                        ddp=train_model if train_model is not model else None)
    model.train()
    return TrainState(model, optimizer, runner, progress, data_gen, mask_gen)


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's and torch.compile's


def plain_state_dict(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights saved from a wrapped model (by other tools) with the wrappers' prefixes taken off.
    mlmlab saves the plain module's state, so its own checkpoints pass through unchanged."""
    def plain(name: str) -> str:
        while name.startswith(WRAPPER_PREFIXES):
            name = name.split(".", 1)[1]
        return name

    return {plain(name): value for name, value in weights.items()}


def restore(payload: dict, model: MaskedLM, optimizer: torch.optim.Optimizer,
            data_gen: torch.Generator, mask_gen: torch.Generator) -> Progress:
    """Load a checkpoint into a freshly built model, optimizer and generators; its progress."""
    try:
        model.load_state_dict(plain_state_dict(payload["model"]))
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
    return Progress(payload["step"], payload.get("tokens", 0), payload.get("elapsed", 0.0))
