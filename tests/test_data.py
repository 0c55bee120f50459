import pytest
import torch

from mlmlab.corpus import BLOCK_CHARS
from mlmlab.data import WindowSampler, builtin_corpus, load_corpus, split_text
from mlmlab.errors import DataError


def test_split_is_deterministic_disjoint_and_spread():
    text = "".join(chr(65 + (i // BLOCK_CHARS) % 26) * BLOCK_CHARS for i in range(0, 100 * BLOCK_CHARS, BLOCK_CHARS))
    train, valid = split_text(text, 0.1, min_chars=33)
    assert (train, valid) == split_text(text, 0.1, min_chars=33)
    assert len(train) + len(valid) == len(text)
    assert 0.07 < len(valid) / len(text) < 0.13
    # held-out blocks come from all over the corpus, not only its tail
    assert len(set(valid)) > 5


def test_small_corpus_holds_out_tail_and_too_short_is_an_error():
    train, valid = split_text("x" * 1000, 0.1, min_chars=33)
    assert len(valid) == 100 and len(train) == 900
    with pytest.raises(DataError, match="too short"):
        split_text("abc", 0.1, min_chars=33)


def test_folder_of_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta")
    (tmp_path / "c.bin").write_bytes(b"\x00\x01")
    assert load_corpus(str(tmp_path)) == "alpha\n\nbeta"
    assert load_corpus(str(tmp_path), max_chars=3) == "alp"


def test_bad_file_in_folder_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa bad")
    with pytest.raises(DataError, match="bad.txt': not UTF-8"):
        load_corpus(str(tmp_path))


def test_builtin_corpus_needs_no_download_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MLMLAB_CACHE", str(tmp_path))
    text = builtin_corpus()
    assert len(text) > 500_000 and "def" in text
    assert list(tmp_path.glob("builtin-corpus-*.txt"))
    assert builtin_corpus() == text


def test_windows_are_real_slices():
    ids = torch.arange(100)
    gen = torch.Generator().manual_seed(0)
    windows = WindowSampler(ids, gen).batch(8, 10)
    assert windows.shape == (8, 10)
    assert ((windows[:, 1:] - windows[:, :-1]) == 1).all()
