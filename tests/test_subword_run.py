"""A tiny WordPiece run end to end, as a user starts it: it completes, learns, shows readable pieces,
and a resumed run keeps (and does not retrain) its tokenizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY_SETS, run_cli, sets_args
from mlmlab.store import Store
from mlmlab.tokenizer import tokenizer_from_dict


@pytest.mark.slow
def test_tiny_wordpiece_run_learns_and_resumes_with_its_tokenizer(tmp_path, corpus_file):
    db = tmp_path / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}", "data.tokenizer=wordpiece", "data.vocab_size=120",
            "train.steps=60", "train.lr=5e-3"]
    first = run_cli("run", "--db", str(db), "--quiet", "--name", "wp", *sets_args(sets))
    assert first.returncode == 0, first.stderr
    with Store(db, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "completed" and run["config"]["data"]["tokenizer"] == "wordpiece"
        vocab = run["vocab"]
        tok = tokenizer_from_dict(vocab)
        assert vocab["kind"] == "wordpiece" and tok.vocab_size == 120
        losses = [v for _, v in store.series(1, "eval_loss")]
        # lower at the end than at the first evaluation (one step between evaluations may go up a little:
        # the WordPiece vocabulary itself varies between trainings) and well below guessing among the 117 real pieces
        assert len(losses) == 3 and losses[-1] < losses[0] and losses[-1] < math.log(117) - 0.5, losses
        samples = store.samples(1)
        assert samples
        shown = [t for row in samples for t in row["tokens"]]
        pieces = {orig for orig, *_ in shown}
        assert not any(p.startswith("##") for p in pieces)  # continuations read without their marker
        assert any(p.startswith(" ") and p.strip().isalpha() for p in pieces)  # word starts with their space
        assert any(len(p.strip()) > 1 for p in pieces)  # pieces, not characters
        text = samples[0]["text"]
        assert "##" not in text and set(text.split()) & {"the", "cat", "dog", "sat"}
        assert "[MASK]" in samples[0]["masked"]
        run_dir = Path(run["run_dir"])
    saved = json.loads((run_dir / "tokenizer.json").read_text())
    assert saved["model"]["type"] == "WordPiece"
    # Resume in a fresh cache folder: its token cache is built again from the run's own tokenizer,
    # and no vocabulary is trained (a training pass leaves a vocab-*.json memo there).
    fresh = tmp_path / "fresh-cache"
    resumed = run_cli("run", "--db", str(db), "--quiet", "--resume", "1", "--set", "train.steps=80",
                      env={"MLMLAB_CACHE": str(fresh)})
    assert resumed.returncode == 0, resumed.stderr
    assert list(fresh.rglob("*.tok")) and not list(fresh.rglob("vocab-*.json"))
    with Store(db, readonly=True) as store:
        run = store.run(1)
        assert run["status"] == "completed" and run["step"] == 80
        assert run["vocab"] == vocab
        assert [s for s, _ in store.series(1, "eval_loss")][-1] == 80
    assert json.loads((run_dir / "tokenizer.json").read_text()) == saved
