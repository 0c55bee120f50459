"""Whole-word and span masking over a WordPiece vocabulary: the token strategy's invariants (exact
budget, disjoint [MASK] / random / unchanged split, never a special token) on large batches of
real pieces, every piece of a word chosen with it but the one unit per batch the budget cuts, and
the words those of the `tokenizers` library's own word ids."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_corpus
from mlmlab.masking import IGNORE, mask_tokens, maskable, n_chosen_for
from mlmlab.masking_strategies import word_masking
from mlmlab.subword import train_subword
from mlmlab.tokenizer import MASK_ID, N_SPECIAL, PAD_ID, UNK_ID
from mlmlab.vocab import KIND_KEEP, KIND_MASK, KIND_NONE, KIND_RANDOM

SPLIT = dict(masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1)
WORD_STRATEGIES = ["whole_word", "span"]


@pytest.fixture(scope="module")
def wordpiece():
    """A small WordPiece vocabulary (most words come in several pieces) and a (256, 64) batch of
    windows of its ids, with padding, [UNK] and [MASK] in it as real batches may hold."""
    text = make_corpus(3000, seed=2)
    tok = train_subword("wordpiece", [text], 90)
    ids = torch.tensor(tok.encode(text))
    starts = torch.randint(0, ids.numel() - 64, (256,), generator=torch.Generator().manual_seed(0))
    batch = torch.stack([ids[s : s + 64] for s in starts.tolist()])
    batch[3, 40:] = PAD_ID
    batch[7, 5] = UNK_ID
    batch[9, 11] = MASK_ID
    return tok, batch


def _mask(tok, ids, strategy, seed, **split):
    how = word_masking(strategy, tok)
    b = mask_tokens(ids, vocab_size=tok.vocab_size, generator=torch.Generator().manual_seed(seed), strategy=how,
                    **{**SPLIT, **split})
    return how, b


def test_the_batch_has_words_of_many_pieces(wordpiece):
    tok, ids = wordpiece
    words = word_masking("whole_word", tok).word_ids(ids)
    key = (torch.arange(ids.shape[0]).unsqueeze(1) * ids.shape[1] + words)[words >= 0]
    pieces = torch.bincount(key)
    pieces = pieces[pieces > 0]
    assert float((pieces > 1).float().mean()) > 0.3  # else the tests below would not test grouping


@pytest.mark.parametrize("strategy", WORD_STRATEGIES)
def test_exact_budget_and_disjoint_split(wordpiece, strategy):
    tok, ids = wordpiece
    ok = maskable(ids)
    for seed in range(6):
        _, b = _mask(tok, ids, strategy, seed)
        n = n_chosen_for(int(ok.sum()), SPLIT["masking_prob"])
        assert b.positions.numel() == n == int((b.kinds != KIND_NONE).sum())
        assert b.positions.unique().numel() == n
        n_random = round(n * SPLIT["randomize_prob"])
        n_keep = min(round(n * SPLIT["no_change_prob"]), n - n_random)
        kinds = b.kinds
        assert int((kinds == KIND_RANDOM).sum()) == n_random and int((kinds == KIND_KEEP).sum()) == n_keep
        assert int((kinds == KIND_MASK).sum()) == n - n_random - n_keep
        chosen = kinds != KIND_NONE
        assert not chosen[~ok].any()  # never padding, [UNK], [MASK]: no special token
        assert (b.inputs[kinds == KIND_MASK] == MASK_ID).all()
        assert torch.equal(b.inputs[kinds == KIND_KEEP], ids[kinds == KIND_KEEP])
        assert (b.inputs[kinds == KIND_RANDOM] >= N_SPECIAL).all() and (b.inputs[kinds == KIND_RANDOM] < tok.vocab_size).all()
        assert torch.equal(b.inputs[~chosen], ids[~chosen])
        assert torch.equal(b.labels[chosen], ids[chosen]) and (b.labels[~chosen] == IGNORE).all()
        assert torch.equal(b.positions.sort().values, chosen.reshape(-1).nonzero().squeeze(1))


@pytest.mark.parametrize("strategy", WORD_STRATEGIES)
def test_all_pieces_of_a_word_are_chosen_together_but_one_cut(wordpiece, strategy):
    tok, ids = wordpiece
    ok = maskable(ids)
    B, T = ids.shape
    for seed in range(6):
        how, b = _mask(tok, ids, strategy, seed)
        words, chosen = how.word_ids(ids), b.kinds != KIND_NONE
        key = (torch.arange(B).unsqueeze(1) * T + words)[(words >= 0) & ok]
        picked = chosen[(words >= 0) & ok].float()
        n_pos = torch.bincount(key, minlength=B * T)
        n_in = torch.bincount(key, weights=picked, minlength=B * T).long()
        partial = ((n_in > 0) & (n_in < n_pos)).nonzero().squeeze(1)
        assert partial.numel() <= 1, f"{partial.numel()} words chosen in part"
        whole = int(((n_in == n_pos) & (n_pos > 1)).sum())
        assert whole > 50  # many words of several pieces were chosen, each whole
        for word in partial.tolist():  # the cut unit keeps its leading pieces
            row, index = divmod(word, T)
            flags = chosen[row][(words[row] == index) & ok[row]].tolist()
            assert flags == sorted(flags, reverse=True)


def test_words_are_those_the_library_reports(wordpiece):
    """WordMasking's word ids from the vocabulary's tables are the `tokenizers` encoding's word_ids()."""
    tok, _ = wordpiece
    how = word_masking("whole_word", tok)
    for line in make_corpus(200, seed=9).splitlines():
        enc = tok.tok.encode(line, add_special_tokens=False)
        ours = how.word_ids(torch.tensor([enc.ids]))[0].tolist()
        theirs = [-1 if w is None else w for w in enc.word_ids]
        assert ours == theirs, (line, enc.tokens)


def test_whole_words_are_chosen_equally_often(wordpiece):
    """On one fixed small batch drawn many times: every word's first piece is chosen at one rate, and
    the share of chosen pieces that are randomized does not depend on where they are."""
    tok, ids = wordpiece
    ids = ids[:4, :50]
    ok = maskable(ids).reshape(-1)
    how, draws = word_masking("whole_word", tok), 2000
    gen = torch.Generator().manual_seed(11)
    chosen, randomized = torch.zeros(ids.numel()), torch.zeros(ids.numel())
    for _ in range(draws):
        kinds = mask_tokens(ids, vocab_size=tok.vocab_size, masking_prob=0.2, randomize_prob=0.25, no_change_prob=0.25,
                            generator=gen, strategy=how).kinds.reshape(-1)
        chosen += (kinds != KIND_NONE).float()
        randomized += (kinds == KIND_RANDOM).float()
    assert chosen[~ok].sum() == 0
    half = ids.numel() // 2
    share = [randomized[part].sum() / chosen[part].sum() for part in (slice(0, half), slice(half, None))]
    assert abs(float(share[0] - share[1])) < 0.03 and abs(float(share[0]) - 0.25) < 0.02
    words = how.word_ids(ids).reshape(-1)
    heads = ok & (words >= 0) & (words != F.pad(words[:-1], (1, 0), value=-1))
    rate = chosen[heads] / draws
    # the per-word rate is the budget over the words' sizes: pieces / batch pieces ≈ 0.2 on average
    assert float((rate - rate.mean()).abs().max()) < 5 * (0.25 * 0.75 / draws) ** 0.5 + 0.03
    assert 0.1 < float(rate.mean()) < 0.3


def test_span_chooses_runs_of_words(wordpiece):
    """Span masking chooses several consecutive words at a time; whole-word chooses them apart."""
    tok, ids = wordpiece
    runs = {}
    for strategy in WORD_STRATEGIES:
        how, b = _mask(tok, ids, strategy, 4)
        words, chosen = how.word_ids(ids), b.kinds != KIND_NONE
        # a chosen word followed by a chosen next word of the same row
        first = (words >= 0) & (words != F.pad(words[:, :-1], (1, 0), value=-1))
        heads_chosen = chosen & first
        n_words = int(heads_chosen.sum())
        next_chosen = 0
        for row in range(ids.shape[0]):
            chosen_words = set(words[row][heads_chosen[row]].tolist())
            next_chosen += sum(w + 1 in chosen_words for w in chosen_words)
        runs[strategy] = next_chosen / max(n_words, 1)
    assert runs["span"] > 0.5 and runs["whole_word"] < 0.3, runs
