"""A run's data: the corpus loaded, split and encoded, and the token ids masking must leave alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlmlab.config import ExperimentConfig
from mlmlab.data import load_corpus, split_text
from mlmlab.tokenizer import CharTokenizer, build_tokenizer


@dataclass
class PreparedData:
    tokenizer: CharTokenizer
    train_ids: torch.Tensor  # 1-D, on the CPU; the trainer copies it to the device once
    valid_ids: torch.Tensor  # 1-D, on the CPU (eval batches are built once from it)
    n_chars: int


def prepare_data(cfg: ExperimentConfig, tokenizer: CharTokenizer | None = None) -> PreparedData:
    """Load, split and encode the corpus. A resumed run passes its saved tokenizer."""
    text = load_corpus(cfg.data.source, cfg.data.max_chars)
    train_text, valid_text = split_text(text, cfg.data.valid_fraction, min_chars=cfg.train.seq_len + 1)
    tokenizer = tokenizer or build_tokenizer(cfg.data.tokenizer, train_text)
    encode = lambda s: torch.tensor(tokenizer.encode(s), dtype=torch.long)  # noqa: E731
    return PreparedData(tokenizer, encode(train_text), encode(valid_text), len(text))


def no_mask_ids(tokenizer: CharTokenizer, cfg: ExperimentConfig, device: torch.device) -> torch.Tensor | None:
    """The ids of `mask.no_mask_tokens` on the device, or None when there are none (masking's fast path)."""
    ids = torch.tensor(tokenizer.ids_of(cfg.mask.no_mask_tokens), dtype=torch.long, device=device)
    return ids if ids.numel() else None
