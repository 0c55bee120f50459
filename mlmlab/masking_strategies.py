"""Whole-word and span masking: choose whole units up to the token strategy's exact budget.

`masking.mask_tokens` keeps its budget (`n_chosen_for` over the batch's maskable positions) and its
disjoint [MASK] / random / unchanged split whatever the strategy; a strategy only decides *which*
positions are chosen. Here the choice is made over *units* instead of single positions:

* whole_word: a unit is one word: every maskable position of a chosen word is chosen together
  (BERT's whole-word masking). The split is then drawn per position, as BERT's does.
* span: consecutive words are grouped into spans whose lengths (in words) are drawn from a geometric
  distribution with parameter `span_p`, truncated to 1..`span_max_words` (SpanBERT: p = 0.2, at most
  10 words, mean 3.8); a unit is one span, including the whitespace between its words.

Words come per position, as row-local word ids (-1 = a gap between words: whitespace, a special
token). `WordMasking.word_ids` derives them from two per-vocabulary tables (a token is a gap; a token
always starts a word, as WordPiece's non-`##` or byte-level BPE's `Ġ` pieces do), computed once; a
tokenizer that knows its word ids (Hugging Face `word_ids()`) can pass them to `choose` instead.
Each gap not inside a span is a unit of its own, so every maskable position can still be chosen and
each is chosen with probability close to `masking_prob` (the budget is in positions).

Choosing is vectorised: every unit gets a random priority (one `randperm`), broadcast to its
positions; one stable sort by priority lists the positions unit after unit, and the first `n_chosen`
are taken. The exact budget means the last unit taken may be cut: **at most one unit per batch is
chosen only in part** (its leading positions). The budget is per batch, as the token strategy's is,
not per sequence. A second `randperm` over the chosen positions puts them in a uniform random order,
so the split into groups is exact and uniform over positions as with the token strategy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mlmlab.config.schema import MaskConfig
from mlmlab.tokenizer import N_SPECIAL

SPAN_DEFAULTS = MaskConfig()  # span_p and span_max_words as the config defines them


@dataclass(frozen=True)
class WordMasking:
    kind: str  # "whole_word" or "span"
    gaps: torch.Tensor  # (V,) bool: ids that are between words (whitespace, special tokens)
    starts: torch.Tensor  # (V,) bool: ids that always begin a new word (all False for chars)
    span_p: float = SPAN_DEFAULTS.span_p
    span_max_words: int = SPAN_DEFAULTS.span_max_words

    def word_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Row-local word index of each position of a (B, T) batch, -1 on gaps."""
        in_word = ~self.gaps[ids]
        after_gap = ~F.pad(in_word[:, :-1], (1, 0), value=False)  # row starts count as after a gap
        first = in_word & (after_gap | self.starts[ids])
        return torch.where(in_word, first.cumsum(1) - 1, -1)

    def choose(self, ids: torch.Tensor, flat_ok: torch.Tensor, n_chosen: int,
               generator: torch.Generator | None, word_ids: torch.Tensor | None = None) -> torch.Tensor:
        """`n_chosen` distinct maskable flat positions, whole units at a time, in a uniform random order."""
        words = self.word_ids(ids) if word_ids is None else word_ids
        chunks = None
        if self.kind == "span":
            chunks = span_chunks(words.shape, self.span_p, self.span_max_words, generator, ids.device)
        return choose_units(unit_starts(words, chunks), flat_ok, n_chosen, generator)


def word_masking(strategy: str, tokenizer, device: torch.device | str = "cpu",
                 span_p: float = SPAN_DEFAULTS.span_p,
                 span_max_words: int = SPAN_DEFAULTS.span_max_words) -> WordMasking | None:
    """The strategy for `mask.strategy` (validated by the config), with the tokenizer's word tables on
    `device`; None for "token"."""
    if strategy == "token":
        return None
    gaps, starts = word_tables(tokenizer)
    as_tensor = lambda flags: torch.tensor(flags, dtype=torch.bool, device=device)  # noqa: E731
    return WordMasking(strategy, as_tensor(gaps), as_tensor(starts), span_p, span_max_words)


def word_tables(tokenizer) -> tuple[Sequence[bool], Sequence[bool]]:
    """(is a gap, always starts a word) per token id; the special tokens are gaps.

    A tokenizer may define `word_tables()` itself. Otherwise, from the token strings: the char
    tokenizer's words are maximal runs of non-whitespace characters (nothing starts a word but a
    gap before it); a subword vocabulary marks its pieces: WordPiece continues a word with `##`,
    byte-level BPE and SentencePiece start one with `Ġ` / `▁`. A vocabulary with no such marks
    cannot tell words apart from ids, so each of its tokens is a word.
    """
    own = getattr(tokenizer, "word_tables", None)
    if own is not None:
        return own()
    tokens = [tokenizer.token(i) for i in range(tokenizer.vocab_size)]
    gaps = [i < N_SPECIAL or tok.isspace() for i, tok in enumerate(tokens)]
    real = tokens[N_SPECIAL:]
    if getattr(tokenizer, "kind", "char") == "char":
        starts = [False] * len(tokens)
    elif any(tok.startswith("##") for tok in real):
        starts = [not tok.startswith("##") for tok in tokens]
    elif any(tok.startswith(("Ġ", "▁")) for tok in real):
        starts = [tok.startswith(("Ġ", "▁")) for tok in tokens]
    else:
        starts = [True] * len(tokens)
    return gaps, starts


def span_lengths(u: torch.Tensor, p: float, max_words: int) -> torch.Tensor:
    """Inverse CDF of the geometric(p) distribution truncated to 1..max_words, at uniforms `u` in [0, 1)."""
    q = 1.0 - p
    top = 1.0 - q**max_words  # P(length <= max_words): the truncation renormalises by it
    return torch.ceil(torch.log1p(-u * top) / math.log(q)).clamp_(1, max_words).long()


def expected_span_length(p: float, max_words: int) -> float:
    q = 1.0 - p
    weights = [p * q ** (k - 1) for k in range(1, max_words + 1)]
    return sum(k * w for k, w in enumerate(weights, 1)) / sum(weights)


def span_chunks(shape: torch.Size, p: float, max_words: int, generator: torch.Generator | None,
                device: torch.device) -> torch.Tensor:
    """(B, T): the span index of each row-local word index, from i.i.d. truncated-geometric lengths.

    A row has at most T words, so T lengths per row always cover it; the spans tile the row's words
    and only the last one of a row is cut by the row's end.
    """
    B, T = shape
    lengths = span_lengths(torch.rand((B, T), generator=generator, device=device), p, max_words)
    begin = (lengths.cumsum(1) - lengths).clamp_(max=T)  # first word of each span; column T collects the rest
    first = torch.zeros((B, T + 1), dtype=torch.bool, device=device).scatter_(1, begin, True)[:, :T]
    return first.cumsum(1) - 1


def unit_starts(words: torch.Tensor, chunks: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) bool: the positions where a new unit begins (every row starts one).

    Words are the units, or with `chunks` (span index per word index) the spans of words; a gap
    between two words of one span joins it, every other gap is a unit of its own.
    """
    B, T = words.shape
    in_word = words >= 0
    unit = words if chunks is None else chunks.gather(1, words.clamp(min=0))
    label = torch.where(in_word, unit, -1)
    if chunks is not None:
        idx = torch.arange(T, device=words.device).expand(B, T)
        before = torch.where(in_word, idx, -1).cummax(1).values  # last word position at or before
        after = torch.where(in_word, idx, T).flip(1).cummin(1).values.flip(1)  # first at or after
        unit_before = unit.gather(1, before.clamp(min=0))
        joins = ~in_word & (before >= 0) & (after < T) & (unit_before == unit.gather(1, after.clamp(max=T - 1)))
        label = torch.where(joins, unit_before, label)
    changed = label != F.pad(label[:, :-1], (1, 0), value=-2)  # -2: never a label, so each row starts a unit
    return changed | (label < 0)


def choose_units(starts: torch.Tensor, flat_ok: torch.Tensor, n_chosen: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """The first `n_chosen` maskable positions in a random order of units, then shuffled."""
    unit = starts.reshape(-1).cumsum(0) - 1  # batch-wide unit ids: rows never share one
    n = unit.numel()
    # The first U entries of a uniform permutation are in a uniform random relative order.
    priority = torch.randperm(n, generator=generator, device=unit.device)
    key = torch.where(flat_ok, priority[unit], n)  # non-maskable positions sort last
    # Stable: a unit's positions stay in order, so a cut unit keeps its leading positions.
    order = torch.sort(key, stable=True).indices[:n_chosen]
    return order[torch.randperm(n_chosen, generator=generator, device=unit.device)]
