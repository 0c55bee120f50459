"""The metric window: sums of step outputs between two log lines, read from the device once per line."""

from __future__ import annotations

import time

import torch

from mlmlab.engine.step import StepOutput
from mlmlab.masking import SPLIT_NAMES


class MetricWindow:
    """Sums of step outputs between log lines, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device, skip_nonfinite: bool, world_size: int = 1):
        self.device = device
        self.skip_nonfinite = skip_nonfinite
        self.world_size = world_size  # > 1: loss and accuracy are all-reduced over the ranks at each drain
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
        loss, correct, chosen = self._over_ranks()
        stats = {
            "train_loss": loss / good,
            "train_acc": correct / max(chosen, 1),
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

    def _over_ranks(self) -> tuple[float, float, float]:
        """The window's loss (mean over ranks), correct and chosen counts (summed over ranks), and the
        masking split made a mean over ranks in place: one all-reduce of one small tensor, here only.
        `tokens` needs none: every rank trains on as many tokens per step (the caller multiplies)."""
        if self.world_size == 1:
            return float(self.loss), float(self.correct), float(self.chosen)
        from mlmlab.engine.distributed import all_reduce_sum

        parts = [self.loss.double().reshape(1), self.correct.double().reshape(1),
                 torch.tensor([float(self.chosen)], dtype=torch.float64, device=self.device)]
        if self.split is not None:
            parts.append(self.split.double().reshape(-1))
        summed = all_reduce_sum(torch.cat(parts))
        if self.split is not None:
            self.split = (summed[3:] / self.world_size).to(self.split.dtype).reshape(self.split.shape)
        values = summed[:3].tolist()
        return values[0] / self.world_size, values[1], values[2]
