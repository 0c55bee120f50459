"""Masking invariants, exactly, and its proportions and uniformity, statistically.

The sampler picks positions as the first maskable entries of a random permutation; these tests pin
down everything that must hold whatever the implementation: exact counts, disjoint groups, never a
special or no-mask token, random replacements from real tokens only, inputs untouched elsewhere.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from masking_helpers import STRATEGIES, synthetic_strategy
from mlmlab.masking import (
    IGNORE,
    _first_true,
    _first_true_by_count,
    mask_tokens,
    maskable,
    n_chosen_for,
    realised_split,
)
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID, UNK_ID
from mlmlab.vocab import KIND_KEEP, KIND_MASK, KIND_NONE, KIND_RANDOM

VOCAB = 40
by_strategy = pytest.mark.parametrize("strategy", STRATEGIES)  # the same tests for every mask.strategy


def _batch(B: int, T: int, seed: int, pad_rows: bool = True) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(N_SPECIAL, VOCAB, (B, T), generator=gen)
    ids[gen_bool(ids.shape, 0.03, gen)] = UNK_ID
    if pad_rows:  # ragged rows: padding at the end of some
        for row in range(0, B, 3):
            ids[row, T - 1 - row % T :] = PAD_ID
    return ids


def gen_bool(shape, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < p


def _check(ids: torch.Tensor, b, masking_prob: float, randomize_prob: float, no_change_prob: float,
           no_mask_ids: torch.Tensor | None = None) -> None:
    ok = maskable(ids, no_mask_ids).reshape(-1)
    n_ok = int(ok.sum())
    n = n_chosen_for(n_ok, masking_prob)
    pos = b.positions
    flat, inputs, labels, kinds = ids.reshape(-1), b.inputs.reshape(-1), b.labels.reshape(-1), b.kinds.reshape(-1)
    # exact count, distinct, all maskable (never padding, special or no-mask)
    assert pos.numel() == n
    assert pos.unique().numel() == n
    assert bool(ok[pos].all())
    assert not bool(torch.isin(flat[pos], torch.tensor([PAD_ID, MASK_ID, UNK_ID])).any())
    # exact, disjoint groups
    n_random = round(n * randomize_prob)
    n_keep = min(round(n * no_change_prob), n - n_random)
    assert int((kinds == KIND_RANDOM).sum()) == n_random
    assert int((kinds == KIND_KEEP).sum()) == n_keep
    assert int((kinds == KIND_MASK).sum()) == n - n_random - n_keep
    assert int((kinds != KIND_NONE).sum()) == n
    chosen = kinds != KIND_NONE
    assert torch.equal(chosen.nonzero().squeeze(1).sort().values, pos.sort().values)
    # labels only at chosen positions, holding the original token
    assert torch.equal(labels[chosen], flat[chosen])
    assert bool((labels[~chosen] == IGNORE).all())
    # what the model sees
    assert torch.equal(inputs[~chosen], flat[~chosen])
    assert bool((inputs[kinds == KIND_MASK] == MASK_ID).all())
    assert torch.equal(inputs[kinds == KIND_KEEP], flat[kinds == KIND_KEEP])
    replaced = inputs[kinds == KIND_RANDOM]
    assert bool(((replaced >= N_SPECIAL) & (replaced < VOCAB)).all())
    split = realised_split(b, ids)
    assert int(split["mask_special"]) == 0


@by_strategy
@settings(max_examples=60, deadline=None)
@given(
    B=st.integers(1, 9), T=st.integers(1, 40), seed=st.integers(0, 10_000),
    masking_prob=st.floats(0.01, 1.0), randomize_prob=st.floats(0.0, 1.0), no_change_prob=st.floats(0.0, 1.0),
    pad_rows=st.booleans(),
)
def test_invariants_hold_exactly(B, T, seed, masking_prob, randomize_prob, no_change_prob, pad_rows, strategy):
    no_change_prob = min(no_change_prob, 1.0 - randomize_prob)
    ids = _batch(B, T, seed, pad_rows)
    before = ids.clone()
    b = mask_tokens(ids, vocab_size=VOCAB, masking_prob=masking_prob, randomize_prob=randomize_prob,
                    no_change_prob=no_change_prob, generator=torch.Generator().manual_seed(seed),
                    strategy=synthetic_strategy(strategy, VOCAB))
    assert torch.equal(ids, before)  # the input is never modified
    _check(ids, b, masking_prob, randomize_prob, no_change_prob)


@by_strategy
def test_no_mask_tokens_are_never_chosen(strategy):
    ids = _batch(16, 64, 3)
    no_mask = torch.tensor([5, 6, 7])
    for seed in range(20):
        b = mask_tokens(ids, vocab_size=VOCAB, masking_prob=0.5, randomize_prob=0.1, no_change_prob=0.1,
                        generator=torch.Generator().manual_seed(seed), no_mask_ids=no_mask,
                        strategy=synthetic_strategy(strategy, VOCAB))
        _check(ids, b, 0.5, 0.1, 0.1, no_mask)
        assert not bool(torch.isin(ids.reshape(-1)[b.positions], no_mask).any())


def test_static_count_matches_the_computed_count():
    """Training passes n_chosen for windows without padding; the result must equal the default."""
    ids = torch.randint(N_SPECIAL, VOCAB, (8, 32), generator=torch.Generator().manual_seed(0))
    kw = dict(vocab_size=VOCAB, masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1)
    a = mask_tokens(ids, generator=torch.Generator().manual_seed(1), **kw)
    b = mask_tokens(ids, generator=torch.Generator().manual_seed(1), n_chosen=n_chosen_for(ids.numel(), 0.15), **kw)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.inputs, b.inputs)


@by_strategy
def test_seeded_generator_is_deterministic(strategy):
    ids = _batch(8, 32, 1)
    kw = dict(vocab_size=VOCAB, masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1,
              strategy=synthetic_strategy(strategy, VOCAB))
    a = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    b = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.positions, b.positions)


def test_proportions_and_uniformity_statistically(strategy="token"):
    """Every maskable position is chosen equally often, and the group a position lands in does not
    depend on where it is: the chosen order is a uniform random order."""
    B, T, draws = 4, 50, 3000
    ids = torch.randint(N_SPECIAL, VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    ids[0, 40:] = PAD_ID
    ok = maskable(ids).reshape(-1)
    gen = torch.Generator().manual_seed(11)
    chosen = torch.zeros(B * T)
    randomized = torch.zeros(B * T)
    for _ in range(draws):
        b = mask_tokens(ids, vocab_size=VOCAB, masking_prob=0.2, randomize_prob=0.25, no_change_prob=0.25, generator=gen,
                        strategy=synthetic_strategy(strategy, VOCAB))
        kinds = b.kinds.reshape(-1)
        chosen += (kinds != KIND_NONE).float()
        randomized += (kinds == KIND_RANDOM).float()
    n_ok = int(ok.sum())
    expected = draws * n_chosen_for(n_ok, 0.2) / n_ok
    assert chosen[~ok].sum() == 0
    rate = chosen[ok]
    # binomial sd ≈ sqrt(draws · p · (1-p)) ≈ 22 for p = 0.2; allow 5 sd per position
    assert float((rate - expected).abs().max()) < 5 * (draws * 0.2 * 0.8) ** 0.5
    # positions in the first and second half of the batch are randomized equally often
    half = B * T // 2
    first, second = randomized[:half][ok[:half]].mean(), randomized[half:][ok[half:]].mean()
    assert abs(float(first - second)) / float(randomized[ok].mean()) < 0.08
    # random replacements are spread over all real tokens
    b = mask_tokens(torch.full((64, 64), 10), vocab_size=VOCAB, masking_prob=1.0, randomize_prob=1.0,
                    no_change_prob=0.0, generator=gen, strategy=synthetic_strategy(strategy, VOCAB))
    seen = b.inputs.unique()
    assert seen.min() >= N_SPECIAL and seen.max() < VOCAB and seen.numel() == VOCAB - N_SPECIAL


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_word_strategies_statistically(strategy):
    """The token test's checks that whole units allow, on one fixed small batch drawn many times.

    Per position the rate is not uniform here: a long word's tail is chosen less often than its
    head (the budget cuts the last unit at its end), so instead: nothing unmaskable is ever chosen,
    the share of chosen positions that are randomized does not depend on where they are, every word
    (whole_word) is chosen equally often, and replacements cover the real vocabulary. Per-position
    uniformity over large varied batches is test_masking.py's test_choice_is_uniform_over_positions_and_rows.
    """
    B, T, draws = 4, 50, 3000
    ids = torch.randint(N_SPECIAL, VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    ids[0, 40:] = PAD_ID
    ok = maskable(ids).reshape(-1)
    gen, how = torch.Generator().manual_seed(11), synthetic_strategy(strategy, VOCAB)
    chosen, randomized = torch.zeros(B * T), torch.zeros(B * T)
    for _ in range(draws):
        kinds = mask_tokens(ids, vocab_size=VOCAB, masking_prob=0.2, randomize_prob=0.25, no_change_prob=0.25,
                            generator=gen, strategy=how).kinds.reshape(-1)
        chosen += (kinds != KIND_NONE).float()
        randomized += (kinds == KIND_RANDOM).float()
    assert chosen[~ok].sum() == 0
    half = B * T // 2
    share = [randomized[part].sum() / chosen[part].sum() for part in (slice(0, half), slice(half, None))]
    assert abs(float(share[0] - share[1])) < 0.02 and abs(float(share[0]) - 0.25) < 0.02
    if strategy == "whole_word":  # each word's first position: chosen whenever its word is
        words = how.word_ids(ids).reshape(-1)
        heads = ok & (words >= 0) & (words != torch.nn.functional.pad(words[:-1], (1, 0), value=-1))
        rate = chosen[heads] / draws
        assert float((rate - rate.mean()).abs().max()) < 5 * (0.25 * 0.75 / draws) ** 0.5 + 0.02
    b = mask_tokens(torch.full((64, 64), 10), vocab_size=VOCAB, masking_prob=1.0, randomize_prob=1.0,
                    no_change_prob=0.0, generator=gen, strategy=how)
    assert b.inputs.unique().numel() == VOCAB - N_SPECIAL


def test_both_selection_kernels_agree():
    """The fixed-size selection has a fallback for devices without nonzero_static; same answer."""
    gen = torch.Generator().manual_seed(3)
    for n_total in (1, 7, 100, 1000):
        ok = torch.rand(n_total, generator=gen) < 0.6
        for n in {0, 1, int(ok.sum())}:
            if n > int(ok.sum()):
                continue
            assert torch.equal(_first_true(ok, n), _first_true_by_count(ok, n))
