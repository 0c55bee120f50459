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

1. Draw one uniform score per position; non-maskable positions get -1 so they are never picked.
2. `topk` of the scores picks exactly `n_chosen = round(masking_prob · n_maskable)` positions. The
   scores are i.i.d., so the order `topk` returns them in is itself a uniform random order.
3. Walk that order: the first `round(n_chosen · randomize_prob)` are randomized, the next
   `round(n_chosen · no_change_prob)` stay, the rest become [MASK]. No second draw is needed.

A fixed number of chosen positions per batch also keeps shapes static, so the model can gather just
those positions for its output head (and `torch.compile` sees one shape). Everything is vectorised
tensor code driven by a `torch.Generator`, identical on CPU and CUDA, and the input is never
modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlmlab.tokenizer import MASK_ID, N_SPECIAL

IGNORE = -100
KIND_NONE, KIND_MASK, KIND_RANDOM, KIND_KEEP = 0, 1, 2, 3


@dataclass(frozen=True)
class MaskedBatch:
    inputs: torch.Tensor  # (B, T) ids the model sees
    labels: torch.Tensor  # (B, T) original id at chosen positions, IGNORE elsewhere
    positions: torch.Tensor  # (n_chosen,) flat indices into B*T of the chosen positions
    kinds: torch.Tensor  # (B, T) KIND_* per position, for reporting and display


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
) -> MaskedBatch:
    """Mask a (B, T) batch of ids. `n_chosen` overrides the count (e.g. a static count per shape)."""
    ok = maskable(ids, no_mask_ids)
    flat_ok = ok.reshape(-1)
    if n_chosen is None:
        # One host sync, only on batches that may hold padding; training passes n_chosen.
        n_chosen = n_chosen_for(int(flat_ok.sum()), masking_prob)
    scores = torch.rand(flat_ok.shape, generator=generator, device=ids.device)
    scores = scores.masked_fill(~flat_ok, -1.0)
    positions = scores.topk(n_chosen, sorted=True).indices

    n_random = round(n_chosen * randomize_prob)
    n_keep = min(round(n_chosen * no_change_prob), n_chosen - n_random)
    random_at, mask_at = positions[:n_random], positions[n_random + n_keep :]
    keep_at = positions[n_random : n_random + n_keep]

    flat_ids = ids.reshape(-1)
    inputs = flat_ids.clone()
    replacement = torch.randint(N_SPECIAL, vocab_size, (n_random,), generator=generator, device=ids.device)
    inputs[random_at] = replacement
    inputs[mask_at] = MASK_ID

    labels = torch.full_like(flat_ids, IGNORE)
    labels[positions] = flat_ids[positions]

    kinds = torch.zeros_like(flat_ids, dtype=torch.uint8)
    kinds[mask_at] = KIND_MASK
    kinds[random_at] = KIND_RANDOM
    kinds[keep_at] = KIND_KEEP
    shape = ids.shape
    return MaskedBatch(inputs.view(shape), labels.view(shape), positions, kinds.view(shape))


def realised_split(batch: MaskedBatch, original: torch.Tensor) -> dict[str, torch.Tensor]:
    """The split this batch actually got, as 0-dim tensors (no host sync until the caller reads them)."""
    n_tokens = original.numel()
    n_chosen = max(batch.positions.numel(), 1)
    kinds = batch.kinds
    return {
        "mask_frac": (kinds != KIND_NONE).sum() / n_tokens,
        "mask_mask_frac": (kinds == KIND_MASK).sum() / n_chosen,
        "mask_random_frac": (kinds == KIND_RANDOM).sum() / n_chosen,
        "mask_unchanged_frac": (kinds == KIND_KEEP).sum() / n_chosen,
        # Chosen positions whose original token is special, or random replacements that are: always 0.
        "mask_special": (original.reshape(-1)[batch.positions] < N_SPECIAL).sum()
        + ((kinds == KIND_RANDOM) & (batch.inputs < N_SPECIAL)).sum(),
    }
