"""Masking: every invariant exactly, every proportion statistically on large batches."""

import pytest
import torch

from masking_helpers import STRATEGIES, synthetic_strategy
from mlmlab.masking import IGNORE, mask_tokens, realised_split
from mlmlab.vocab import KIND_KEEP, KIND_MASK, KIND_NONE, KIND_RANDOM
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID, UNK_ID

VOCAB = 60


def batch(b=512, t=256, seed=0, pad_tail=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(N_SPECIAL, VOCAB, (b, t), generator=gen)
    if pad_tail:
        ids[:, -pad_tail:] = PAD_ID
    ids[:, 0] = UNK_ID  # a special token inside the text: never chosen
    return ids


def masked(ids, seed=1, strategy="token", **kw):
    args = dict(vocab_size=VOCAB, masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1)
    args.update(kw)
    return mask_tokens(ids, generator=torch.Generator().manual_seed(seed),
                       strategy=synthetic_strategy(strategy, args["vocab_size"]), **args)


# Every test here holds for every strategy (token, whole_word, span): each takes `strategy`.
pytestmark = pytest.mark.parametrize("strategy", STRATEGIES)


def test_input_is_not_modified(strategy):
    ids = batch()
    before = ids.clone()
    masked(ids, strategy=strategy)
    assert torch.equal(ids, before)


def test_labels_only_at_chosen_positions(strategy):
    ids = batch()
    out = masked(ids, strategy=strategy)
    chosen = out.kinds != KIND_NONE
    assert torch.equal(out.labels[chosen], ids[chosen])
    assert (out.labels[~chosen] == IGNORE).all()
    assert chosen.sum() == out.positions.numel()


def test_never_chooses_padding_special_or_no_mask_tokens(strategy):
    ids = batch(pad_tail=40)
    no_mask = torch.tensor([5, 6, 7])
    out = masked(ids, no_mask_ids=no_mask, strategy=strategy)
    chosen = out.kinds != KIND_NONE
    assert not chosen[ids < N_SPECIAL].any()
    assert not chosen[torch.isin(ids, no_mask)].any()
    # unchosen positions are untouched
    assert torch.equal(out.inputs[~chosen], ids[~chosen])


def test_groups_are_disjoint_and_do_what_they_say(strategy):
    ids = batch()
    out = masked(ids, strategy=strategy)
    kinds = out.kinds
    assert (out.inputs[kinds == KIND_MASK] == MASK_ID).all()
    assert torch.equal(out.inputs[kinds == KIND_KEEP], ids[kinds == KIND_KEEP])
    random_tokens = out.inputs[kinds == KIND_RANDOM]
    assert (random_tokens >= N_SPECIAL).all() and (random_tokens < VOCAB).all()
    # each chosen position belongs to exactly one group
    assert ((kinds == KIND_MASK).int() + (kinds == KIND_RANDOM).int() + (kinds == KIND_KEEP).int()).le(1).all()


def test_random_replacements_never_special_even_with_tiny_vocab(strategy):
    ids = torch.full((64, 64), N_SPECIAL)  # one real token
    out = masked(ids, vocab_size=N_SPECIAL + 1, randomize_prob=1.0, no_change_prob=0.0, strategy=strategy)
    assert (out.inputs[out.kinds == KIND_RANDOM] == N_SPECIAL).all()


@pytest.mark.parametrize("p,r,u", [(0.15, 0.1, 0.1), (0.3, 0.2, 0.3), (0.5, 0.0, 0.0), (0.15, 0.5, 0.5)])
def test_proportions_match_config(p, r, u, strategy):
    ids = batch(pad_tail=16)
    maskable = (ids >= N_SPECIAL).sum().item()
    out = masked(ids, masking_prob=p, randomize_prob=r, no_change_prob=u, strategy=strategy)
    n = out.positions.numel()
    assert n == round(p * maskable)
    kinds = out.kinds
    assert abs((kinds == KIND_RANDOM).sum().item() / n - r) < 1e-3
    assert abs((kinds == KIND_KEEP).sum().item() / n - u) < 1e-3
    assert abs((kinds == KIND_MASK).sum().item() / n - (1 - r - u)) < 1e-3


def test_choice_is_uniform_over_positions_and_rows(strategy):
    ids = batch(b=1024, t=64)
    out = masked(ids, strategy=strategy)
    per_column = (out.kinds != KIND_NONE)[:, 1:].float().mean(0)  # column 0 holds [UNK]
    sigma = (0.15 * 0.85 / 1024) ** 0.5
    assert abs(per_column.mean() - 0.15) < 0.002
    assert (per_column - 0.15).abs().max() < 5 * sigma
    per_row = (out.kinds != KIND_NONE).float().sum(1)
    assert per_row.std() > 0  # not a fixed count per row: the choice is over the whole batch


def test_random_tokens_are_uniform_over_real_vocab(strategy):
    ids = batch(b=1024, t=256)
    out = masked(ids, masking_prob=0.5, randomize_prob=1.0, no_change_prob=0.0, strategy=strategy)
    counts = torch.bincount(out.inputs[out.kinds == KIND_RANDOM], minlength=VOCAB)[N_SPECIAL:].float()
    assert counts.min() > 0.85 * counts.mean() and counts.max() < 1.15 * counts.mean()


def test_same_generator_seed_same_masks_and_different_seed_differs(strategy):
    ids = batch()
    a, b, c = (masked(ids, seed=seed, strategy=strategy) for seed in (3, 3, 4))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_realised_split_reports_zero_special(strategy):
    ids = batch(pad_tail=8)
    out = masked(ids, strategy=strategy)
    split = {k: float(v) for k, v in realised_split(out, ids).items()}
    assert split["mask_special"] == 0
    assert abs(split["mask_random_frac"] - 0.1) < 1e-3
    assert abs(split["mask_unchanged_frac"] - 0.1) < 1e-3
    assert abs(split["mask_mask_frac"] - 0.8) < 1e-3


def test_batch_with_nothing_maskable(strategy):
    ids = torch.full((2, 8), PAD_ID)
    out = masked(ids, strategy=strategy)
    assert out.positions.numel() == 0 and (out.labels == IGNORE).all()
