"""Masking strategies over synthetic ids, for the tests that every strategy must pass.

Random ids have no words, so a few ids are declared whitespace: with about one id in six a gap,
words average about five tokens, as English words do in characters.
"""

from __future__ import annotations

import torch

from mlmlab.masking_strategies import WordMasking
from mlmlab.tokenizer import N_SPECIAL
from mlmlab.vocab import MASK_STRATEGIES as STRATEGIES

N_GAP_IDS = 6  # ids N_SPECIAL .. N_SPECIAL + 5 count as whitespace


def synthetic_strategy(kind: str, vocab: int) -> WordMasking | None:
    """`kind` over ids 0..vocab-1 with the first N_GAP_IDS real ids as gaps; None for "token"."""
    if kind == "token":
        return None
    gaps = torch.arange(vocab) < N_SPECIAL + N_GAP_IDS
    return WordMasking(kind, gaps, torch.zeros(vocab, dtype=torch.bool))


__all__ = ["STRATEGIES", "synthetic_strategy"]
