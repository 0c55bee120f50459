"""The token cache: built once in a streaming pass, reused, rebuilt when stale or corrupt, bounded in memory."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import count_calls
from mlmlab import token_cache
from mlmlab.cli import main
from mlmlab.config import load_config
from mlmlab.data import WindowSampler, load_corpus, split_text
from mlmlab.errors import DataError
from mlmlab.token_cache import HEADER_BYTES, prepare_corpus
from mlmlab.tokenizer import UNK_ID, CharTokenizer

PARAGRAPH = "The quick brown fox jumps over the lazy dog; naïve café, ünïcödé.\n"


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("MLMLAB_CACHE", str(folder))
    return folder


@pytest.fixture
def counted(monkeypatch):
    """How many times each streaming pass ran."""
    calls: dict[str, int] = {}
    count_calls(monkeypatch, calls, "tokenise", token_cache, "_tokenise_chars")
    count_calls(monkeypatch, calls, "vocab", token_cache, "train_char_counts")  # where the cache calls it
    return calls


def corpus_file(tmp_path, text, name="corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_ids_are_the_text_encoded_and_reused_without_tokenising_again(tmp_path, counted):
    path = corpus_file(tmp_path, "".join(f"{i} {PARAGRAPH}\n" for i in range(800)))
    tok, first = prepare_corpus(str(path), min_len=65, chunk_bytes=4096)
    text = load_corpus(str(path))
    assert first.built and tok.chars == CharTokenizer.from_text(split_text(text, 0.05, 65)[0]).chars
    assert np.array_equal(first.ids, tok.encode(text)) and first.ids.dtype == np.uint16
    tok2, second = prepare_corpus(str(path), min_len=65)
    assert not second.built and counted == {"tokenise": 1, "vocab": 1}  # no second pass of either kind
    assert tok2.chars == tok.chars and np.array_equal(second.ids, first.ids)
    _, third = prepare_corpus(str(path), min_len=129)  # longer windows: the same split of a corpus this size
    assert not third.built and counted == {"tokenise": 1, "vocab": 1}


def test_changed_corpus_is_rebuilt(tmp_path, counted):
    path = corpus_file(tmp_path, PARAGRAPH * 400)
    _, first = prepare_corpus(str(path))
    path.write_text(PARAGRAPH * 399 + "Something else entirely.\n", encoding="utf-8")
    os.utime(path, ns=(1, 1))  # a new mtime even on a coarse clock
    tok, second = prepare_corpus(str(path))
    assert second.built and second.path != first.path and counted["tokenise"] == 2
    assert np.array_equal(second.ids, tok.encode(load_corpus(str(path))))


def test_a_resumed_runs_vocabulary_gets_its_own_cache_with_unk(tmp_path):
    path = corpus_file(tmp_path, PARAGRAPH * 400)
    _, own = prepare_corpus(str(path))
    saved = CharTokenizer("Te ")
    tok, cache = prepare_corpus(str(path), saved)
    assert tok is saved and cache.path != own.path
    assert np.array_equal(cache.ids[:4], [saved.stoi["T"], UNK_ID, saved.stoi["e"], saved.stoi[" "]])


@pytest.mark.parametrize("damage", ["truncate", "header", "other_key"])
def test_corrupt_or_mismatched_cache_is_detected_and_rebuilt(tmp_path, damage):
    path = corpus_file(tmp_path, PARAGRAPH * 400)
    _, good = prepare_corpus(str(path))
    expected = np.array(good.ids)
    raw = good.path.read_bytes()
    if damage == "truncate":
        good.path.write_bytes(raw[:-7])
    elif damage == "header":
        good.path.write_bytes(b"garbage!" + raw[8:])
    else:
        other = corpus_file(tmp_path, PARAGRAPH * 300, "other.txt")
        _, wrong = prepare_corpus(str(other))
        good.path.write_bytes(wrong.path.read_bytes())
    said = []
    _, again = prepare_corpus(str(path), on_message=said.append)
    assert again.built and np.array_equal(again.ids, expected)
    assert len(said) == 1 and said[0].startswith("token cache ") and said[0].endswith("rebuilding it")
    assert not list(good.path.parent.glob("*.tmp"))  # nothing half-written is left behind


def test_empty_corpus_is_one_line_error_exit_2(tmp_path, capsys):
    path = corpus_file(tmp_path, " \n\n \t\n")
    with pytest.raises(DataError, match="the corpus is empty"):
        prepare_corpus(str(path))
    assert main(["data", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the corpus is empty" in err


def test_documents_are_files_of_a_folder_or_paragraphs_of_a_file(tmp_path, monkeypatch):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha\n\nbeta")
    (folder / "b.md").write_text("gamma")
    _, cache = prepare_corpus(str(folder), min_len=3)
    assert list(cache.docs) == [0, len("alpha\n\nbeta\n\n")]
    text = "one\n\ntwo\n\n\nthree\nstill three\n\nfour"
    expected = [0, 5, 11, 30]
    for chunk in (1, 2, 3, 4096):  # a boundary cut by a chunk edge is found once
        monkeypatch.setenv("MLMLAB_CACHE", str(tmp_path / f"cache-{chunk}"))  # tokenised afresh each time
        path = corpus_file(tmp_path, text, f"p{chunk}.txt")
        _, cache = prepare_corpus(str(path), min_len=3, chunk_bytes=chunk)
        assert cache.built and list(cache.docs) == expected, chunk
        assert [text[i - 2 : i] for i in expected[1:]] == ["\n\n"] * 3


def test_split_is_deterministic_and_the_one_of_the_text(tmp_path):
    from mlmlab.engine.data import prepare_data

    path = corpus_file(tmp_path, "".join(f"line {i} {PARAGRAPH}" for i in range(2000)))
    cfg = load_config(None, [f"data.source={path}", "data.valid_fraction=0.1"])
    a, b = prepare_data(cfg), prepare_data(cfg)
    train, valid = split_text(load_corpus(str(path)), 0.1, min_chars=cfg.train.seq_len + 1)
    tok = a.tokenizer
    assert torch.equal(a.train_ids.tensor(), torch.tensor(tok.encode(train)))
    assert torch.equal(a.valid_ids.tensor(), torch.tensor(tok.encode(valid)))
    assert torch.equal(b.train_ids.tensor(), a.train_ids.tensor()) and not b.cache.built
    # windows from the memmap view are the windows the in-memory tensor gave for the same seed
    old = WindowSampler(a.train_ids.tensor(), torch.Generator().manual_seed(5)).batch(16, 40)
    new = WindowSampler(a.train_ids, torch.Generator().manual_seed(5)).batch(16, 40)
    assert torch.equal(old, new) and new.dtype == torch.long


def test_view_stays_a_memmap_on_the_cpu_and_is_copied_once_to_an_accelerator(tmp_path, monkeypatch):
    from mlmlab.engine.data import prepare_data
    from mlmlab.engine.step import to_device

    path = corpus_file(tmp_path, PARAGRAPH * 400)
    data = prepare_data(load_config(None, [f"data.source={path}"]))
    view = data.train_ids
    assert to_device(view, torch.device("cpu")) is view  # the page cache holds the ids, not a copy
    copied = view.to(torch.device("meta"))
    assert isinstance(copied, torch.Tensor) and copied.shape == (view.numel(),) and copied.dtype == torch.long
    monkeypatch.setattr(token_cache, "DEVICE_COPY_MAX_TOKENS", 10)
    assert view.to(torch.device("meta")) is view  # too large to copy: windows are read per batch
    stale = token_cache.tokens_dir() / "old-build.tmp"
    stale.write_bytes(b"x")
    os.utime(stale, (1, 1))
    path.write_text(PARAGRAPH * 300)
    prepare_corpus(str(path))
    assert not stale.exists()  # a killed build's leftover goes with the next build


def test_data_command_prints_its_figures(tmp_path, capsys):
    path = corpus_file(tmp_path, PARAGRAPH * 400)
    assert main(["data", str(path)]) == 0
    out = capsys.readouterr().out
    for word in ("tokenised", "tokens", "vocabulary", "documents", "on disk", "time"):
        assert word in out
    assert f"{len(PARAGRAPH) * 400:,}" in out
    assert main(["data", str(path), "--json"]) == 0
    fig = json.loads(capsys.readouterr().out)
    assert fig["built"] is False and fig["tokens"] == len(PARAGRAPH) * 400 and fig["bytes_on_disk"] > HEADER_BYTES


CHILD = """
import resource, sys
from mlmlab.token_cache import prepare_corpus
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
prepare_corpus(sys.argv[1], chunk_bytes=1 << 16)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_memory_is_bounded_by_the_chunk_not_the_corpus(tmp_path, cache):
    path = tmp_path / "big.txt"
    block = "".join(f"{i} {PARAGRAPH}" for i in range(2000)).encode()
    with open(path, "wb") as f:
        while f.tell() < 12_000_000:
            f.write(block)
    size = path.stat().st_size
    env = {**os.environ, "MLMLAB_CACHE": str(cache)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, check=True, capture_output=True, text=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    # the corpus as a str alone is `size` bytes, as int64 ids 8x that; streaming stays far below
    assert growth < size / 3, f"peak RSS grew {growth / 1e6:.1f} MB for a {size / 1e6:.1f} MB corpus"
