"""A run's data: the corpus loaded, split and encoded, and the token ids masking must leave alone."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlmlab.config import ExperimentConfig
from mlmlab.masking_strategies import WordMasking, word_masking
from mlmlab.data_prep import corpus_arguments
from mlmlab.token_cache import TokenCache, TokenView, prepare_corpus, split_views
from mlmlab.tokenizer import CharTokenizer


def _say(text: str) -> None:
    print(f"mlmlab: {text}", file=sys.stderr, flush=True)


@dataclass
class PreparedData:
    tokenizer: CharTokenizer
    train_ids: TokenView  # 1-D view of the token cache's memmap; `to_device` copies it to an accelerator once
    valid_ids: TokenView  # the held-out side (eval batches are built once from it)
    cache: TokenCache


def prepare_data(cfg: ExperimentConfig, tokenizer: CharTokenizer | None = None, *,
                 on_message: Callable[[str], None] = _say) -> PreparedData:
    """The corpus tokenised through the token cache (built on first use, reused after) and split.
    A resumed run passes its saved tokenizer, whose own cache is used."""
    settings = corpus_arguments(cfg)
    tokenizer, cache = prepare_corpus(cfg.data.source, tokenizer, **settings, on_message=on_message)
    train, valid = split_views(cache, settings["valid_fraction"], settings["min_len"])
    return PreparedData(tokenizer, train, valid, cache)


def mask_strategy(tokenizer: CharTokenizer, cfg: ExperimentConfig, device: torch.device) -> WordMasking | None:
    """`mask.strategy` with the tokenizer's word tables on the device; None for the token strategy."""
    k = cfg.mask
    return word_masking(k.strategy, tokenizer, device, k.span_p, k.span_max_words)


def no_mask_ids(tokenizer: CharTokenizer, cfg: ExperimentConfig, device: torch.device) -> torch.Tensor | None:
    """The ids of `mask.no_mask_tokens` on the device, or None when there are none (masking's fast path)."""
    ids = torch.tensor(tokenizer.ids_of(cfg.mask.no_mask_tokens), dtype=torch.long, device=device)
    return ids if ids.numel() else None
