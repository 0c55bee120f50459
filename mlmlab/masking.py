"""BERT's masking: choose positions to predict, then hide them in three disjoint ways.

Given a batch of token ids, we choose `masking_prob` of the *maskable* positions (never padding,
never special tokens, never the configured no-mask tokens). The model must predict the original
token at each chosen position, and only there: every other label is IGNORE (-100), which
`cross_entropy` skips.

Of the chosen positions,
* a share `randomize_prob` is replaced by a random *real* token (never [PAD], [MASK] or [UNK]),
* a share `no_change_prob` keeps its token, so the model cannot learn "only [MASK] needs predicting",
* the rest become [MASK].

The labml reference draws the random and unchanged groups independently, so they overlap and the
split is really 81/10/9; and its random ids can be [PAD] or [MASK]. Here the groups are disjoint by
construction and the counts are exact:

1. Draw one random permutation of the B·T positions (`randperm`: one random draw per position).
2. Walk it and keep the first `n_chosen = round(masking_prob · n_maskable)` maskable positions
   (`nonzero_static` finds them with a fixed output size, so nothing waits for the device). A
   uniform permutation restricted to the maskable positions is still uniform, so these are a
   uniform random subset *in a uniform random order*.
3. Split that order: the first `round(n_chosen · randomize_prob)` are randomized, the next
   `round(n_chosen · no_change_prob)` stay, the rest become [MASK]. No second draw is needed.

This is cheaper than the reference's three Bernoulli draws (and than a `topk` over random scores,
the previous version here), and exact. A fixed number of chosen positions per batch also keeps
shapes static, so the model can gather just those positions for its output head (and
`torch.compile` sees one shape). Everything is vectorised tensor code driven by a
`torch.Generator`, identical on CPU and CUDA, and the input is never modified.

That is the token strategy. `mask.strategy` = whole_word or span (masking_strategies.py) replaces
step 2 only: the same count is taken whole words or spans at a time, then put in a random order,
so step 3 and everything reported stay as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlmlab.masking_strategies import WordMasking
from mlmlab.tokenizer import MASK_ID, N_SPECIAL
from mlmlab.vocab import KIND_KEEP, KIND_MASK, KIND_RANDOM

IGNORE = -100


@dataclass(frozen=True)
class MaskedBatch:
    inputs: torch.Tensor  # (B, T) ids the model sees
    labels: torch.Tensor  # (B, T) original id at chosen positions, IGNORE elsewhere
    positions: torch.Tensor  # (n_chosen,) flat indices into B*T of the chosen positions
    kinds: torch.Tensor  # (B, T) vocab.KIND_* per position, for reporting and display


def maskable(ids: torch.Tensor, no_mask_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Positions holding real tokens that are not configured as no-mask."""
    ok = ids >= N_SPECIAL
    if no_mask_ids is not None and no_mask_ids.numel():
        ok &= ~torch.isin(ids, no_mask_ids)
    return ok


def n_chosen_for(n_maskable: int, masking_prob: float) -> int:
    return min(n_maskable, max(1, round(n_maskable * masking_prob))) if n_maskable else 0


def mask_tokens(
    ids: torch.Tensor,
    *,
    vocab_size: int,
    masking_prob: float,
    randomize_prob: float,
    no_change_prob: float,
    generator: torch.Generator | None = None,
    no_mask_ids: torch.Tensor | None = None,
    n_chosen: int | None = None,
    strategy: WordMasking | None = None,
) -> MaskedBatch:
    """Mask a (B, T) batch of ids. `n_chosen` overrides the count (e.g. a static count per shape).

    `strategy` (masking_strategies.word_masking) chooses whole words or spans instead of single
    tokens, with the same count and split; None is the token strategy.
    """
    ok = maskable(ids, no_mask_ids)
    flat_ok = ok.reshape(-1)
    if n_chosen is None:
        # One host sync, only on batches that may hold padding; training passes n_chosen.
        n_chosen = n_chosen_for(int(flat_ok.sum()), masking_prob)
    if strategy is None:
        positions = _choose(flat_ok, n_chosen, generator)
    else:
        positions = strategy.choose(ids, flat_ok, n_chosen, generator)
    n_random = round(n_chosen * randomize_prob)
    n_keep = min(round(n_chosen * no_change_prob), n_chosen - n_random)
    # `positions` is in random order: [ n_random randomized | n_keep unchanged | the rest [MASK] ].
    # Each output is one scatter of a (n_chosen,) vector, not one indexed write per group.
    flat_ids = ids.reshape(-1)
    targets = flat_ids.take(positions)
    group, masked = _groups(n_chosen, n_random, n_keep, ids.device)
    replacement = torch.randint(N_SPECIAL, vocab_size, (n_random,), generator=generator, device=ids.device)
    shown = torch.cat((replacement, targets[n_random : n_random + n_keep], masked))
    inputs = flat_ids.clone().scatter_(0, positions, shown)
    labels = torch.full_like(flat_ids, IGNORE).scatter_(0, positions, targets)
    kinds = torch.zeros_like(flat_ids, dtype=torch.uint8).scatter_(0, positions, group)
    shape = ids.shape
    return MaskedBatch(inputs.view(shape), labels.view(shape), positions, kinds.view(shape))


@functools.lru_cache(maxsize=64)
def _groups(n_chosen: int, n_random: int, n_keep: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The KIND_* of each slot of `positions`, and the [MASK] ids of the last group (constant per shape)."""
    group = torch.full((n_chosen,), KIND_MASK, dtype=torch.uint8)
    group[:n_random] = KIND_RANDOM
    group[n_random : n_random + n_keep] = KIND_KEEP
    masked = torch.full((n_chosen - n_random - n_keep,), MASK_ID, dtype=torch.long)
    return group.to(device), masked.to(device)


def _choose(flat_ok: torch.Tensor, n_chosen: int, generator: torch.Generator | None) -> torch.Tensor:
    """`n_chosen` distinct maskable flat positions, uniformly at random and in a uniform random order.

    The first `n_chosen` maskable entries of a random permutation, found with a fixed output size
    so that nothing waits for the device. `n_chosen` must not exceed the number of maskable
    positions (`n_chosen_for` guarantees it); missing entries would repeat the permutation's last.
    """
    perm = torch.randperm(flat_ok.numel(), generator=generator, device=flat_ok.device)
    ok = flat_ok[perm]
    first = _first_true(ok, n_chosen) if ok.device.type in ("cpu", "cuda") else _first_true_by_count(ok, n_chosen)
    return perm[first]


def _first_true(ok: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the first `n` True entries of a 1-D bool tensor (-1 where there are fewer)."""
    return torch.nonzero_static(ok, size=n, fill_value=-1).squeeze(1)


def _first_true_by_count(ok: torch.Tensor, n: int) -> torch.Tensor:
    """The same as `_first_true` from a cumulative count and a scatter, for devices without
    a `nonzero_static` kernel (MPS)."""
    rank = ok.cumsum(0)
    slot = torch.where(ok & (rank <= n), rank - 1, n)  # slot n collects everything not kept
    first = torch.full((n + 1,), -1, dtype=torch.long, device=ok.device)
    return first.scatter_(0, slot, torch.arange(ok.numel(), device=ok.device))[:n]


SPLIT_NAMES = ("mask_frac", "mask_mask_frac", "mask_random_frac", "mask_unchanged_frac", "mask_special")


def split_vector(batch: MaskedBatch, original: torch.Tensor) -> torch.Tensor:
    """The split this batch actually got, one float tensor in SPLIT_NAMES order (no host sync).

    Training computes it every step, so it takes a handful of kernels (one bincount for the
    three groups) rather than one comparison and sum per figure.
    """
    kinds = batch.kinds.reshape(-1)
    per_kind = torch.bincount(kinds, minlength=4)  # KIND_NONE, KIND_MASK, KIND_RANDOM, KIND_KEEP
    # Chosen positions whose original token is special, or random replacements that are: always 0.
    special = (original.reshape(-1)[batch.positions] < N_SPECIAL).sum() + (
        (kinds == KIND_RANDOM) & (batch.inputs.reshape(-1) < N_SPECIAL)
    ).sum()
    counts = torch.cat([per_kind[1:].sum().reshape(1), per_kind[1:], special.reshape(1)]).float()
    n_tokens, n_chosen = original.numel(), max(batch.positions.numel(), 1)
    return counts / torch.tensor([n_tokens, n_chosen, n_chosen, n_chosen, 1.0], device=counts.device)


def realised_split(batch: MaskedBatch, original: torch.Tensor) -> dict[str, torch.Tensor]:
    """`split_vector` by name, as 0-dim tensors."""
    return dict(zip(SPLIT_NAMES, split_vector(batch, original).unbind()))