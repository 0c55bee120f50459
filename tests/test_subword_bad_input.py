"""Bad input for subword runs (issue 12, requirement 7): one line naming the problem, exit 2, nothing
half-written, and no run row left behind (a run's data is prepared before its row is created).

The CLI runs in this process through `mlmlab.cli.main` where nothing trains, as tests/test_hostile_input.py
does; the test that needs a trained run trains one tiny wordpiece run in a subprocess.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import TINY_SETS, make_corpus, run_cli, sets_args

from mlmlab.cli import main
from mlmlab.errors import DataError
from mlmlab.subword import train_subword
from mlmlab.token_cache import HEADER_BYTES, MAGIC, prepare_corpus, tokens_dir


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def cache_files() -> list[str]:
    """Token cache files and temporary files in the cache folder (memos of hashes and vocabularies aside)."""
    return sorted(p.name for p in tokens_dir().iterdir() if p.name.endswith((".tok", ".tmp")))


def run_argv(db: Path, source: Path, *sets: str) -> list[str]:
    return ["run", "--db", db, "--quiet", *sets_args([*TINY_SETS, f"data.source={source}", *sets])]


def no_runs(db: Path) -> bool:
    """No run row: the database was never created, or holds no run."""
    if not db.exists():
        return True
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from runs").fetchone()[0] == 0


@pytest.fixture
def text_file(tmp_path):
    """Write `text` to a corpus file of its own."""
    def write(text: str, name: str = "corpus.txt") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path
    return write


# --- vocabulary sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,size,least", [("wordpiece", 3, 4), ("bpe", 1, 4), ("bytelevel", 258, 259)])
def test_a_vocabulary_too_small_for_the_special_tokens_is_a_config_error(capsys, tmp_path, corpus_file, kind, size, least):
    db = tmp_path / "runs" / "mlmlab.db"
    expected = f"data.vocab_size = {size}: too small for {kind}: at least {least}"
    for argv in (run_argv(db, corpus_file, f"data.tokenizer={kind}", f"data.vocab_size={size}"),
                 ["data", corpus_file, "--tokenizer", kind, "--vocab-size", size]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and one_line(err) == f"mlmlab: error: {expected} (the 3 special tokens " + (
            "and the 256 bytes)" if kind == "bytelevel" else "and one piece)")
    assert not db.exists() and cache_files() == []


def test_a_vocabulary_size_for_the_char_tokenizer_is_a_config_error(capsys, tmp_path, corpus_file):
    code, _, err = cli(capsys, *run_argv(tmp_path / "r.db", corpus_file, "data.vocab_size=100"))
    assert code == 2 and "data.vocab_size = 100: the char tokenizer takes every character" in one_line(err)


@pytest.mark.parametrize("command", ["run", "data"])
def test_a_vocabulary_larger_than_the_corpus_can_give_names_the_most_it_can(capsys, tmp_path, corpus_file, command):
    db = tmp_path / "runs" / "mlmlab.db"
    argv = (run_argv(db, corpus_file, "data.tokenizer=wordpiece", "data.vocab_size=5000") if command == "run"
            else ["data", corpus_file, "--tokenizer", "wordpiece", "--vocab-size", 5000])
    code, out, err = cli(capsys, *argv)
    line = one_line(err)
    assert code == 2 and out == ""
    assert "data.vocab_size = 5000: larger than this corpus can give" in line and "choose at most" in line, line
    most = int(line.rsplit("choose at most ", 1)[1].rstrip(")"))
    assert 50 < most < 5000
    assert no_runs(db) and cache_files() == []  # failed before any row or cache file
    # The size it names works.
    code, _, err = cli(capsys, "data", corpus_file, "--tokenizer", "wordpiece", "--vocab-size", most)
    assert code == 0, err


# --- corpora with nothing to learn from ---------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    (" \n\t\n   \n" * 200, "the corpus is empty"),
    # BERT's normaliser drops control characters and U+FFFD: nothing is left for wordpiece.
    ("\x01\x02\x03\ufffd\n" * 200, "the training split is empty after wordpiece tokenisation"),
])
@pytest.mark.parametrize("command", ["run", "data"])
def test_a_corpus_empty_after_tokenisation_is_one_line(capsys, tmp_path, text_file, text, expected, command):
    source, db = text_file(text), tmp_path / "runs" / "mlmlab.db"
    argv = (run_argv(db, source, "data.tokenizer=wordpiece", "data.vocab_size=100") if command == "run"
            else ["data", source, "--tokenizer", "wordpiece", "--vocab-size", 100])
    code, _, err = cli(capsys, *argv)
    assert code == 2 and expected in one_line(err), err
    assert no_runs(db) and cache_files() == []


def test_a_given_tokenizer_that_reads_a_corpus_as_nothing_leaves_no_cache_file(text_file):
    """A resumed run brings its tokenizer: the cache is then written, and must not be left half-written."""
    tokenizer = train_subword("wordpiece", [make_corpus(500)], 100)
    source = text_file("\x01\x02\ufffd\n" * 500)
    with pytest.raises(DataError, match="nothing but special tokens after wordpiece tokenisation"):
        prepare_corpus(str(source), tokenizer, kind="wordpiece", vocab_size=100, min_len=33)
    assert cache_files() == []


# --- the cache file -------------------------------------------------------------------------------------


def prepare(capsys, source: Path, kind: str = "wordpiece") -> tuple[dict, str]:
    code, out, err = cli(capsys, "data", source, "--tokenizer", kind, "--vocab-size", 300 if kind == "bytelevel" else 100,
                         "--json")
    assert code == 0, err
    return json.loads(out), err


def garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(MAGIC):len(MAGIC) + 8] = b"{{{{{{{{"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage,reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:HEADER_BYTES + 100]), "bytes, the header says"),
    (lambda p: p.write_bytes(b"\x00garbage" * 2000), "not a token cache file (bad header)"),
    (garble_header, "its header does not parse"),
], ids=["truncated", "garbage", "header-json"])
def test_a_corrupt_cache_file_is_rebuilt_with_one_line(capsys, corpus_file, damage, reason):
    first, _ = prepare(capsys, corpus_file)
    path = Path(first["path"])
    damage(path)
    again, err = prepare(capsys, corpus_file)
    line = one_line(err)
    assert line.startswith(f"token cache {path.name}: ") and line.endswith("; rebuilding it") and reason in line, line
    assert again["built"] and again["tokens"] == first["tokens"] and again["path"] == first["path"]
    third, err = prepare(capsys, corpus_file)
    assert not third["built"] and err == ""  # the rebuilt file is whole: reused without a word
    assert cache_files() == [path.name]  # no temporary file left


def test_a_cache_file_made_for_another_tokenizer_is_rebuilt_with_one_line(capsys, corpus_file):
    wordpiece, _ = prepare(capsys, corpus_file, "wordpiece")
    bytelevel, _ = prepare(capsys, corpus_file, "bytelevel")
    target = Path(wordpiece["path"])
    target.write_bytes(Path(bytelevel["path"]).read_bytes())  # the right name, another tokenizer's content
    again, err = prepare(capsys, corpus_file, "wordpiece")
    assert one_line(err) == f"token cache {target.name}: made for another corpus or tokenizer; rebuilding it"
    assert again["built"] and again["tokens"] == wordpiece["tokens"]
    header = json.loads(target.read_bytes()[len(MAGIC):HEADER_BYTES].decode().strip())
    assert header["tokenizer"] == "wordpiece"


# --- a tokenizer that does not parse ----------------------------------------------------------------------

BROKEN_JSON = '{"version": "1.0", "model": {broken'


def break_vocab(vocab: dict) -> dict:
    return {**vocab, "tokenizer_json": BROKEN_JSON}


@pytest.mark.slow
def test_a_broken_tokenizer_json_in_the_run_row_or_checkpoint_is_one_line(tmp_path, corpus_file):
    db = tmp_path / "runs" / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}", "data.tokenizer=wordpiece", "data.vocab_size=100",
            "train.steps=20", "train.eval_every=10", "train.checkpoint_every=10", "train.log_every=5"]
    result = run_cli("run", "--db", str(db), "--quiet", "--name", "wp", *sets_args(sets))
    assert result.returncode == 0, result.stderr

    # The run row's copy is for the record: resuming reads the checkpoint's, so a broken row still resumes.
    with sqlite3.connect(db) as conn:
        vocab = json.loads(conn.execute("select vocab from runs where id = 1").fetchone()[0])
        assert vocab["kind"] == "wordpiece"
        conn.execute("update runs set vocab = ? where id = 1", (json.dumps(break_vocab(vocab)),))
    result = run_cli("run", "--resume", "1", "--db", str(db), "--quiet", "--set", "train.steps=30")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

    with sqlite3.connect(db) as conn:
        checkpoints = [Path(row[0]) for row in conn.execute("select path from checkpoints where run_id = 1")]
        assert conn.execute("select status, step from runs where id = 1").fetchone() == ("completed", 30)
    assert checkpoints
    for path in checkpoints:
        payload = torch.load(path, weights_only=True)
        payload["vocab"] = break_vocab(payload["vocab"])
        torch.save(payload, path)
    before = sorted(p.name for p in checkpoints[0].parent.iterdir())

    result = run_cli("predict", "1", "The [MASK] sat on a mat.", "--db", str(db))
    line = one_line(result.stderr)
    assert result.returncode == 2 and "tokenizer_json: does not parse as a tokenizers file" in line, line

    result = run_cli("run", "--resume", "1", "--db", str(db), "--quiet", "--set", "train.steps=40")
    line = one_line(result.stderr)
    assert result.returncode == 2 and line.startswith(f"mlmlab: error: checkpoint {checkpoints[-1]}: "), line
    assert "tokenizer_json: does not parse as a tokenizers file" in line
    with sqlite3.connect(db) as conn:  # the failed resume changed nothing
        assert conn.execute("select status, step from runs where id = 1").fetchone() == ("completed", 30)
    assert sorted(p.name for p in checkpoints[0].parent.iterdir()) == before


def test_base_gpu_asks_for_bert_bases_vocabulary_and_says_where_to_get_it():
    """30,522 WordPiece pieces, as bert-base; more than the built-in corpus can give, which its header says
    (loading the preset trains nothing)."""
    from mlmlab.config import find_preset, load_config

    cfg = load_config("base-gpu")
    assert (cfg.data.tokenizer, cfg.data.vocab_size, cfg.train.seq_len) == ("wordpiece", 30522, 128)
    header = find_preset("base-gpu").read_text()
    assert "larger than this corpus can give" in header and "--set data.source=" in header
