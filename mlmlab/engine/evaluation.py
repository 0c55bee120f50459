"""Held-out evaluation and samples: fixed windows with fixed masks, so every run and checkpoint compares."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mlmlab.config import ExperimentConfig
from mlmlab.data import WindowSampler
from mlmlab.engine.step import to_device
from mlmlab.masking import mask_tokens
from mlmlab.model import MaskedLM
from mlmlab.tokenizer import N_SPECIAL, CharTokenizer
from mlmlab.vocab import KIND_NAMES, VISIBLE

EVAL_SEED = 1234  # fixed: held-out windows and masks are identical across runs and checkpoints
# Held-out batches are masked at BERT's standard rates whatever rate a recipe trains with (the
# quick preset trains at 40%), so evaluation always measures the same task and runs compare.
# For the same reason held-out masks always use the token strategy (no `strategy=`), whatever
# `mask.strategy` a run trains with.
EVAL_MASKING = {"masking_prob": 0.15, "randomize_prob": 0.1, "no_change_prob": 0.1}
N_SAMPLE_PROMPTS = 4


@dataclass
class EvalSet:
    """Fixed held-out windows with fixed masks (EVAL_MASKING rates), built once from EVAL_SEED."""

    batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (ids, inputs, labels)
    prompts: torch.Tensor  # (N_SAMPLE_PROMPTS, T) original ids
    prompt_inputs: torch.Tensor
    prompt_labels: torch.Tensor
    prompt_kinds: torch.Tensor
    chars_per_id: torch.Tensor | None = None  # (V,) characters each token covers, for bits per character


def token_chars(tokenizer, device) -> torch.Tensor:
    """How many characters of text each token id covers (its readable piece, a word's leading space
    included; 1 for every char token), so held-out loss compares across tokenizers as bits per character."""
    counts = [max(len(tokenizer.token(i)), 1) if i >= N_SPECIAL else 1 for i in range(tokenizer.vocab_size)]
    return torch.tensor(counts, dtype=torch.float32, device=device)


def build_eval_set(valid_ids: torch.Tensor, cfg: ExperimentConfig, vocab_size: int, no_mask_ids, device,
                   chars_per_id: torch.Tensor | None = None) -> EvalSet:
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
    return EvalSet(batches, prompts, p.inputs, p.labels, p.kinds, chars_per_id)


@torch.no_grad()
def evaluate(model: MaskedLM, evalset: EvalSet, precision: str, device: torch.device) -> dict[str, float]:
    """Loss and accuracy over the fixed held-out batches; sums stay on the device, one read at the end.
    With the set's `chars_per_id`, also `eval_bpc`: the loss in bits per character of the hidden text
    (nats summed over the chosen tokens, over the characters those tokens cover, / ln 2)."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = torch.zeros((), device=device, dtype=torch.long)
    chars = torch.zeros((), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for ids, inputs, labels in evalset.batches:
            logits, _ = model(inputs)
            chosen = labels != -100
            picked = logits[chosen].float()
            total_loss += F.cross_entropy(picked, labels[chosen], reduction="sum")
            correct += (picked.argmax(-1) == labels[chosen]).sum()
            count += chosen.sum()
            if evalset.chars_per_id is not None:
                chars += evalset.chars_per_id[labels[chosen]].sum()
    model.train()
    n = max(int(count), 1)
    figures = {"eval_loss": float(total_loss) / n, "eval_acc": int(correct) / n}
    if evalset.chars_per_id is not None:
        figures["eval_bpc"] = float(total_loss) / max(float(chars), 1.0) / math.log(2)
    return figures


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
        chosen = [t for t in tokens if t[3] != VISIBLE]
        rows.append({
            "prompt": i, "text": tokenizer.decode(original), "masked": tokenizer.decode(shown),
            "predicted": "".join(predicted), "tokens": tokens, "n_chosen": len(chosen),
            "n_correct": sum(t[0] == t[2] for t in chosen),
        })
    return rows
