"""The subword token cache: built once and reused, rebuilt when stale or corrupt, independent of the
chunk size, its document offsets and block table right, and its split the characters' split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import count_calls, make_corpus
from mlmlab import subword, token_cache
from mlmlab.corpus import BLOCK_CHARS, held_out_blocks
from mlmlab.data import load_corpus
from mlmlab.token_cache import HEADER_BYTES, MAGIC, open_cache, prepare_corpus, split_views
from mlmlab.tokenizer import N_SPECIAL

SIZES = {"wordpiece": 120, "bpe": 120, "bytelevel": 300}


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MLMLAB_CACHE", str(folder))
    return folder


@pytest.fixture
def counted(monkeypatch):
    """How many times the subword streaming pass and vocabulary training ran."""
    calls: dict[str, int] = {}
    count_calls(monkeypatch, calls, "tokenise", token_cache, "_tokenise_subwords")
    count_calls(monkeypatch, calls, "train", subword, "train_subword")  # token_cache imports it from there when it trains
    return calls


def paragraphs_text(n: int = 1500, seed: int = 0) -> str:
    """Test-made sentences in paragraphs, with indentation, trailing spaces, CRLF and unicode."""
    out = []
    for i, line in enumerate(make_corpus(n, seed).splitlines()):
        out.append(line + ("\n\n" if i % 9 == 8 else "\n"))
        if i % 13 == 0:
            out.append("  indented café line   \r\n")
    return "".join(out)


def write(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("kind", list(SIZES))
def test_built_once_then_reused(tmp_path, counted, kind):
    path = write(tmp_path, paragraphs_text())
    tok, first = prepare_corpus(str(path), kind=kind, vocab_size=SIZES[kind])
    assert first.built and counted == {"tokenise": 1, "train": 1}
    assert tok.kind == kind and tok.vocab_size == SIZES[kind] and first.ids.dtype == np.uint16
    assert np.array_equal(first.ids, tok.encode(load_corpus(str(path))))
    tok2, second = prepare_corpus(str(path), kind=kind, vocab_size=SIZES[kind])
    assert not second.built and counted == {"tokenise": 1, "train": 1}  # neither trained nor tokenised again
    assert tok2.to_dict() == tok.to_dict() and second.path == first.path
    assert np.array_equal(second.ids, first.ids) and np.array_equal(second.docs, first.docs)
    assert np.array_equal(second.blocks, first.blocks) and second.n_chars == first.n_chars
    # a resumed run passes its own tokenizer: the same cache, nothing trained
    _, resumed = prepare_corpus(str(path), tokenizer_from_saved(tok), kind=kind, vocab_size=SIZES[kind])
    assert not resumed.built and resumed.path == first.path and counted == {"tokenise": 1, "train": 1}


def tokenizer_from_saved(tok):
    from mlmlab.tokenizer import tokenizer_from_dict

    return tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))  # as a run row or checkpoint holds it


def test_rebuilt_when_the_corpus_or_vocab_size_changes(tmp_path, counted):
    import os

    path = write(tmp_path, paragraphs_text())
    tok, first = prepare_corpus(str(path), kind="wordpiece", vocab_size=120)
    tok_small, smaller = prepare_corpus(str(path), kind="wordpiece", vocab_size=100)
    assert smaller.built and smaller.path != first.path and tok_small.vocab_size == 100
    assert counted == {"tokenise": 2, "train": 2}
    path.write_text(paragraphs_text() + "A new last line about a boat.\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    tok3, changed = prepare_corpus(str(path), kind="wordpiece", vocab_size=120)
    assert changed.built and changed.path not in (first.path, smaller.path) and counted == {"tokenise": 3, "train": 3}
    assert np.array_equal(changed.ids, tok3.encode(load_corpus(str(path))))
    _, char = prepare_corpus(str(path))  # another kind: its own cache
    assert char.built and char.path != changed.path and counted["tokenise"] == 3


@pytest.mark.parametrize("damage", ["truncate", "header", "blocks"])
def test_corrupt_cache_is_detected_and_rebuilt_with_one_message(tmp_path, damage):
    path = write(tmp_path, paragraphs_text())
    _, good = prepare_corpus(str(path), kind="bpe", vocab_size=120)
    expected, blocks = np.array(good.ids), good.blocks.copy()
    raw = good.path.read_bytes()
    if damage == "truncate":
        good.path.write_bytes(raw[:-8])  # the block table's last entry gone
    elif damage == "header":
        good.path.write_bytes(raw[:len(MAGIC)] + b"{not json" + raw[len(MAGIC) + 9:])
    else:  # a header claiming another block count
        meta = json.loads(raw[len(MAGIC):HEADER_BYTES].decode())
        meta["n_blocks"] += 1
        body = MAGIC + json.dumps(meta).encode()
        good.path.write_bytes(body + b" " * (HEADER_BYTES - 1 - len(body)) + b"\n" + raw[HEADER_BYTES:])
    said = []
    _, again = prepare_corpus(str(path), kind="bpe", vocab_size=120, on_message=said.append)
    assert again.built and np.array_equal(again.ids, expected) and np.array_equal(again.blocks, blocks)
    assert len(said) == 1 and said[0].startswith("token cache ") and said[0].endswith("rebuilding it")
    assert "\n" not in said[0]
    assert not list(good.path.parent.glob("*.tmp"))


@pytest.mark.parametrize("kind", list(SIZES))
def test_small_chunks_give_the_same_cache_as_one_big_chunk(tmp_path, monkeypatch, kind):
    text = paragraphs_text(2500)
    assert len(text.encode()) > 20 * 4096  # many chunks, and over 20 blocks: the split is by blocks
    path = write(tmp_path, text)
    got = {}
    for chunk in (1 << 22, 4096, 1000):
        monkeypatch.setenv("MLMLAB_CACHE", str(tmp_path / f"cache-{chunk}"))  # trained and tokenised afresh
        # the wordpiece trainer is not deterministic (huggingface/tokenizers#1794): give it the first vocabulary
        given = got[1 << 22][0] if kind == "wordpiece" and got else None
        tok, cache = prepare_corpus(str(path), given, kind=kind, vocab_size=SIZES[kind], chunk_bytes=chunk)
        assert cache.built
        train, valid = split_views(cache, 0.05, 65)
        got[chunk] = (tok, np.array(cache.ids), np.array(cache.docs), cache.blocks.copy(),
                      train.starts, train.offsets, valid.starts, valid.offsets)
    big = got[1 << 22]
    assert np.array_equal(big[1], big[0].encode(text))
    for chunk in (4096, 1000):
        assert got[chunk][0].to_dict() == big[0].to_dict(), "the vocabulary does not depend on the chunk size"
        for a, b in zip(got[chunk][1:], big[1:]):
            assert np.array_equal(a, b), chunk


def _token_starts(tok, text: str) -> np.ndarray:
    _, offsets = tok.encode_offsets(text)
    return np.array([s for s, _ in offsets], np.int64)


@pytest.mark.parametrize("kind", list(SIZES))
def test_document_offsets_are_the_first_token_of_each_paragraph(tmp_path, kind):
    text = paragraphs_text(600)
    path = write(tmp_path, text)
    tok, cache = prepare_corpus(str(path), kind=kind, vocab_size=SIZES[kind], chunk_bytes=4096)
    starts = _token_starts(tok, text)
    paragraph_chars = [0] + [i for i in range(2, len(text)) if text[i - 2:i] == "\n\n" and text[i] != "\n"]
    expected = np.searchsorted(starts, paragraph_chars, side="left")
    assert np.array_equal(cache.docs, expected)
    for d, c in zip(cache.docs[1:], paragraph_chars[1:]):  # the token begins the paragraph's text
        assert starts[d] >= c and starts[d - 1] < c
        assert text[c:].lstrip().startswith(tok.decode([int(cache.ids[d])]).strip()[:1])


@pytest.mark.parametrize("kind", list(SIZES))
def test_document_offsets_are_the_first_token_of_each_file(tmp_path, kind):
    folder = tmp_path / "docs"
    folder.mkdir()
    parts = [make_corpus(40, seed=s) for s in range(6)]
    parts[2] = "  " + parts[2]  # a file starting with indentation
    for i, part in enumerate(parts):
        (folder / f"{i:02d}.txt").write_text(part, encoding="utf-8")
    tok, cache = prepare_corpus(str(folder), kind=kind, vocab_size=SIZES[kind], min_len=3, chunk_bytes=1024)
    text = "\n\n".join(parts)
    assert np.array_equal(cache.ids, tok.encode(text))
    file_chars = np.cumsum([0] + [len(p) + 2 for p in parts[:-1]])
    assert np.array_equal(cache.docs, np.searchsorted(_token_starts(tok, text), file_chars, side="left"))


@pytest.mark.parametrize("kind", list(SIZES))
def test_held_out_tokens_are_those_starting_in_held_out_blocks(tmp_path, kind):
    text = paragraphs_text(2000)
    path = write(tmp_path, text)
    tok, cache = prepare_corpus(str(path), kind=kind, vocab_size=SIZES[kind], chunk_bytes=4096)
    assert cache.n_chars == len(text) and len(cache.blocks) == -(-len(text) // BLOCK_CHARS)
    starts = _token_starts(tok, text)
    assert np.array_equal(cache.blocks, np.searchsorted(starts, np.arange(0, len(text), BLOCK_CHARS)))
    train, valid = split_views(cache, 0.05, 65)
    assert train.numel() + valid.numel() == cache.n_tokens
    held = held_out_blocks(0, len(cache.blocks), 0.05)[starts // BLOCK_CHARS]
    assert np.array_equal(valid.corpus_index(np.arange(valid.numel())), np.flatnonzero(held))
    assert np.array_equal(train.corpus_index(np.arange(train.numel())), np.flatnonzero(~held))
    assert 0.03 < valid.numel() / cache.n_tokens < 0.07
    # the held-out text is the char run's held-out text
    _, char_cache = prepare_corpus(str(path))
    _, char_valid = split_views(char_cache, 0.05, 65)
    held_chars = held_out_blocks(0, len(cache.blocks), 0.05)[np.arange(len(text)) // BLOCK_CHARS]
    assert np.array_equal(char_valid.corpus_index(np.arange(char_valid.numel())), np.flatnonzero(held_chars))


def test_small_corpus_split_adds_up(tmp_path):
    text = paragraphs_text(150)  # under 20 blocks: the tail is held out
    assert len(text) < 20 * BLOCK_CHARS
    path = write(tmp_path, text)
    _, cache = prepare_corpus(str(path), kind="bpe", vocab_size=100, min_len=33)
    train, valid = split_views(cache, 0.05, 33)
    assert train.numel() + valid.numel() == cache.n_tokens
    assert valid.numel() >= 33 and train.starts[0] == 0 and valid.starts[0] == train.numel()


def test_char_cache_opens_an_old_file_without_a_block_table(tmp_path):
    path = write(tmp_path, paragraphs_text(300))
    tok, cache = prepare_corpus(str(path))
    raw = cache.path.read_bytes()
    meta = json.loads(raw[len(MAGIC):HEADER_BYTES].decode())
    assert meta["n_blocks"] == 0
    old = {k: v for k, v in meta.items() if k not in ("n_blocks", "n_chars")}  # as the first format wrote it
    body = MAGIC + json.dumps(old).encode()
    cache.path.write_bytes(body + b" " * (HEADER_BYTES - 1 - len(body)) + b"\n" + raw[HEADER_BYTES:])
    opened = open_cache(cache.path, meta["key"])
    assert np.array_equal(opened.ids, cache.ids) and np.array_equal(opened.docs, cache.docs)
    assert len(opened.blocks) == 0 and opened.n_chars == opened.n_tokens
    said = []
    _, again = prepare_corpus(str(path), on_message=said.append)
    assert not again.built and not said and np.array_equal(again.ids, tok.encode(load_corpus(str(path))))
    train, valid = split_views(again, 0.05, 65)
    assert train.numel() + valid.numel() == again.n_tokens
    assert int(again.ids.min()) >= N_SPECIAL
