"""A tiny WordPiece run and a tiny char run in one database, for the subword prediction and explorer tests."""

from __future__ import annotations

from pathlib import Path

from conftest import TINY_SETS, run_cli, sets_args

# 120 pieces: whole words for most of the test corpus, but "quick" is " q" + "uick", so braces can
# cut a piece and `w` has a word of several pieces to hide.
WORDPIECE_SETS = ["data.tokenizer=wordpiece", "data.vocab_size=120"]


def train_pair(db: Path, corpus: Path) -> dict[str, int]:
    """Run ids by name: 'wp' (WordPiece, id 1) and 'ch' (characters, id 2), 60 steps each."""
    base = [*TINY_SETS, f"data.source={corpus}", "train.steps=60"]
    for name, extra in (("wp", WORDPIECE_SETS), ("ch", [])):
        result = run_cli("run", "--db", str(db), "--quiet", "--name", name, *sets_args([*base, *extra]))
        assert result.returncode == 0, result.stderr
    return {"wp": 1, "ch": 2}
