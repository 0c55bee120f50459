"""mask.strategy: whole words and spans on real text, the token strategy unchanged, config and runs.

The statistical tests every strategy passes (exact budget, disjoint split, never special or no-mask)
are test_masking.py and test_masking_exact.py, parametrised over the strategies.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, sets_args
from mlmlab.config import load_config
from mlmlab.data import load_corpus
from mlmlab.errors import ConfigError
from mlmlab.masking import mask_tokens, maskable, n_chosen_for
from mlmlab.masking_strategies import (
    expected_span_length, span_chunks, span_lengths, unit_starts, word_masking,
)
from mlmlab.tokenizer import N_SPECIAL, PAD_ID, UNK_ID, CharTokenizer
from mlmlab.vocab import KIND_NONE, KIND_RANDOM
from mlmlab.vocab import MASK_STRATEGIES as STRATEGIES

SPLIT = dict(masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1)


@pytest.fixture(scope="module")
def text_batch():
    """(tokenizer, (256, 64) ids) of real English text from the built-in corpus, as training sees it."""
    text = load_corpus("builtin", 300_000)
    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text[: 256 * 64 * 4]))
    starts = torch.randint(0, ids.numel() - 64, (256,), generator=torch.Generator().manual_seed(0))
    return tok, torch.stack([ids[s : s + 64] for s in starts.tolist()])


# Digests of the token strategy's output, computed from the code before strategies existed.
TOKEN_DIGESTS = {(0, False): "e108c6da8115ad9d", (0, True): "f2b4756299373f9c",
                 (1, False): "55a646101cf2ba90", (1, True): "e3d1b04022f4ebe8"}


@pytest.mark.parametrize("seed,no_mask", list(TOKEN_DIGESTS))
def test_token_strategy_is_bit_for_bit_unchanged(seed, no_mask):
    gen = torch.Generator().manual_seed(100 + seed)
    ids = torch.randint(N_SPECIAL, 40, (16, 48), generator=gen)
    ids[3, 40:] = PAD_ID
    ids[5, 7] = UNK_ID
    b = mask_tokens(ids, vocab_size=40, generator=torch.Generator().manual_seed(seed),
                    no_mask_ids=torch.tensor([5, 6]) if no_mask else None, **SPLIT)
    digest = hashlib.sha256()
    for t in (b.inputs, b.labels, b.positions, b.kinds):
        digest.update(t.contiguous().numpy().tobytes())
    assert digest.hexdigest()[:16] == TOKEN_DIGESTS[seed, no_mask]


def _words_and_chosen(tok, ids, strategy, seed, no_mask=None):
    how = word_masking(strategy, tok)
    b = mask_tokens(ids, vocab_size=tok.vocab_size, generator=torch.Generator().manual_seed(seed),
                    strategy=how, no_mask_ids=no_mask, **SPLIT)
    return how.word_ids(ids), b.kinds != KIND_NONE, b


@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_words_are_chosen_whole_but_one_cut_per_batch(text_batch, strategy):
    """Every maskable position of a word is chosen with the word, except the one unit the exact
    budget cuts; that unit keeps its leading positions."""
    tok, ids = text_batch
    no_mask = torch.tensor(tok.ids_of(["e"]))  # a no-mask token inside words: skipped, the word still whole
    ok = maskable(ids, no_mask)
    for seed in range(5):
        words, chosen, b = _words_and_chosen(tok, ids, strategy, seed, no_mask)
        assert b.positions.numel() == n_chosen_for(int(ok.sum()), SPLIT["masking_prob"])
        assert not chosen[~ok].any()
        key = (torch.arange(ids.shape[0]).unsqueeze(1) * ids.shape[1] + words)[(words >= 0) & ok]
        picked = chosen[(words >= 0) & ok].long()
        n_pos = torch.bincount(key, minlength=ids.numel())
        n_in = torch.bincount(key, weights=picked.float(), minlength=ids.numel()).long()
        partial = ((n_in > 0) & (n_in < n_pos)).nonzero().squeeze(1)
        assert partial.numel() <= 1
        for word in partial.tolist():  # the cut word: a prefix of its maskable positions is chosen
            row, index = divmod(word, ids.shape[1])
            flags = chosen[row][(words[row] == index) & ok[row]].tolist()
            assert flags == sorted(flags, reverse=True)


def test_span_units_hold_their_inner_whitespace(text_batch):
    tok, ids = text_batch
    words, chosen, _ = _words_and_chosen(tok, ids, "span", 3)
    gap_between = (words < 0) & (F.pad(words[:, :-1], (1, 0), value=-1) >= 0)
    gap_between &= F.pad(words[:, 1:], (0, 1), value=-1) >= 0
    # a single gap between two chosen characters of different words is chosen far more often than
    # the 15% of the token strategy: spans average 3.8 words, so most such gaps lie inside one
    both = gap_between & F.pad(chosen[:, :-1], (1, 0)) & F.pad(chosen[:, 1:], (0, 1))
    assert chosen[both].float().mean() > 0.7


def test_span_lengths_follow_the_truncated_geometric():
    p, top = 0.2, 10
    lengths = span_lengths(torch.rand(200_000, generator=torch.Generator().manual_seed(0)), p, top)
    assert lengths.min() == 1 and lengths.max() == top
    pmf = torch.tensor([p * (1 - p) ** (k - 1) for k in range(1, top + 1)])
    freq = torch.bincount(lengths, minlength=top + 1)[1:].double() / lengths.numel()
    assert float((freq - pmf / pmf.sum()).abs().max()) < 0.005
    assert abs(float(lengths.double().mean()) - expected_span_length(p, top)) < 0.03
    assert abs(expected_span_length(0.2, 10) - 3.797) < 1e-3  # SpanBERT's 3.8


def test_spans_in_a_batch_average_the_expected_words(text_batch):
    """Words per span as a batch draws them (each row's last span, cut by the row's end, left out),
    and on real text every row starts a unit of its own."""
    B, T = 64, 1024
    chunks = span_chunks(torch.Size((B, T)), 0.2, 10, torch.Generator().manual_seed(5), torch.device("cpu"))
    complete = chunks < chunks[:, -1:]  # the last span of a row may be cut
    sizes = torch.bincount((chunks + torch.arange(B).unsqueeze(1) * T)[complete]).double()
    sizes = sizes[sizes > 0]
    assert sizes.min() >= 1 and sizes.max() <= 10
    assert abs(float(sizes.mean()) - expected_span_length(0.2, 10)) < 0.05
    tok, ids = text_batch
    words = word_masking("span", tok).word_ids(ids)
    starts = unit_starts(words, span_chunks(words.shape, 0.2, 10, None, ids.device))
    assert bool(starts[:, 0].all())  # no unit spans two rows


def test_whole_word_groups_by_word_ids_given_by_a_tokenizer():
    """A subword tokenizer passes word ids (Hugging Face word_ids()); -1 marks a gap."""
    words = torch.tensor([[0, 0, 0, 1, 1, -1, 2]])
    assert unit_starts(words).int().tolist() == [[1, 0, 0, 1, 0, 1, 1]]
    # spans: words 0 and 1 form span 0, word 2 span 1; the gap inside span 0 joins it
    gapped = torch.tensor([[0, 0, -1, 1, 1, -1, 2]])
    chunks = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])  # span index of word index 0, 1, 2, ...
    assert unit_starts(gapped, chunks).int().tolist() == [[1, 0, 0, 0, 0, 1, 1]]


def test_unknown_strategy_is_one_config_error():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["mask.strategy=wholeword"])
    assert error.value.key == "mask.strategy" and "\n" not in str(error.value)
    assert "token" in str(error.value) and "span" in str(error.value)
    with pytest.raises(ConfigError) as error:
        load_config(None, ["mask.span_p=1"])
    assert error.value.key == "mask.span_p"


def test_defaults_and_old_configs_mean_the_token_strategy():
    cfg = load_config(None)
    assert (cfg.mask.strategy, cfg.mask.span_p, cfg.mask.span_max_words) == ("token", 0.2, 10)
    assert word_masking("token", None) is None


def test_the_form_offers_the_strategies():
    pytest.importorskip("textual")
    from mlmlab.tui.screens.form import FIELD_KEYS, choices

    assert "mask.strategy" in FIELD_KEYS and choices("mask.strategy") == STRATEGIES


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["whole_word", "span"])
def test_a_tiny_run_trains_with_the_strategy(tmp_path, tiny_sets, strategy):
    from mlmlab.predict.loading import PredictorCache, load_predictor
    from mlmlab.notation import parse
    from mlmlab.store import Store

    db = tmp_path / "mlmlab.db"
    sets = tiny_sets + ["train.steps=20", f"mask.strategy={strategy}"]
    result = run_cli("run", "--db", str(db), "--quiet", *sets_args(sets))
    assert result.returncode == 0, result.stderr
    with Store(db, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "completed" and run["config"]["mask"]["strategy"] == strategy
        assert all(v == 0 for _, v in store.series(1, "mask_special"))
        assert all(abs(v - 0.1) < 0.02 for _, v in store.series(1, "mask_random_frac"))
        assert len(store.series(1, "eval_loss")) == 1
    _, predictor = load_predictor(db, 1, None, PredictorCache())
    text = parse("the quick brown fox jumps over the lazy dog", require_mask=False)
    drawn = predictor.draw_training_mask(text, seed=1)
    hidden = set(drawn.hidden)
    assert hidden and len(hidden) == round(0.15 * min(len(text), predictor.max_seq_len))
    if strategy == "whole_word":  # at most one word only partly hidden (the cut)
        spans, start = [], 0
        for word in text.text.split(" "):
            spans.append(range(start, start + len(word)))
            start += len(word) + 1
        assert sum(0 < len(hidden & set(w)) < len(w) for w in spans) <= 1


class _Pieces:
    """A stand-in subword vocabulary: token strings only, as word_tables reads them."""

    def __init__(self, kind, pieces):
        self.kind, self.itos = kind, ["[PAD]", "[MASK]", "[UNK]", *pieces]
        self.vocab_size = len(self.itos)

    def token(self, i):
        return self.itos[i]


@pytest.mark.parametrize("kind,pieces", [("wordpiece", ["the", "##s", "cat", "##ty"]),
                                         ("bytelevel", ["Ġthe", "s", "Ġcat", "ty"])])
def test_subword_pieces_of_one_word_form_one_word(kind, pieces):
    how = word_masking("whole_word", _Pieces(kind, pieces))
    ids = torch.tensor([[3, 4, 5, 6, 3, 5]])  # the|s cat|ty the cat
    assert how.word_ids(ids).tolist() == [[0, 0, 1, 1, 2, 3]]
