"""Shared fixtures: every test gets its own database, cache and corpus; no test touches $HOME."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A tiny model that trains in seconds on 2 cores; tests override what they need.
TINY_SETS = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
    "train.batch_size=16", "train.seq_len=32", "train.steps=40", "train.max_minutes=0", "train.lr=3e-3",
    "train.warmup_steps=5", "train.log_every=5", "train.eval_every=20", "train.eval_batches=2",
    "train.checkpoint_every=20", "train.precision=fp32", "mask.masking_prob=0.15",
]

_WORDS = ("the cat dog sat on a mat and ran to big small red blue house tree fox jumps over lazy "
          "quick brown old man sea boat river hill sun moon star bird sings").split()


def make_corpus(n_sentences: int = 3000, seed: int = 0) -> str:
    """Simple, learnable English-like text made up by the test (no text from elsewhere)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_sentences):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 10))]
        lines.append(" ".join(words).capitalize() + ".")
    return "\n".join(lines) + "\n"


def count_calls(monkeypatch, calls: dict[str, int], key: str, module, name: str) -> None:
    """Replace `module.name` by a wrapper that counts its calls in `calls[key]` and then calls it."""
    real = getattr(module, name)
    calls.setdefault(key, 0)

    def counted(*args, **kwargs):
        calls[key] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MLMLAB_CACHE", str(home / "cache"))
    monkeypatch.delenv("MLMLAB_DB", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "runs" / "mlmlab.db"


@pytest.fixture
def tiny_sets(corpus_file) -> list[str]:
    return [*TINY_SETS, f"data.source={corpus_file}"]


def mlmlab_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlmlab", *args]


def run_cli(*args: str, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `mlmlab ARGS` as a real subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(mlmlab_cmd(*args), capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)


def sets_args(sets: list[str]) -> list[str]:
    return [arg for s in sets for arg in ("--set", s)]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses `trained_run` (directly or through another fixture) is slow: it may be the one
    that trains it. Tests that train on their own carry `@pytest.mark.slow` themselves."""
    for item in items:
        if "trained_run" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus_file):
    """One tiny completed run shared by read-only tests: (db path, run id). Its users are marked slow."""
    db = tmp_path_factory.mktemp("trained") / "mlmlab.db"
    sets = [*TINY_SETS, f"data.source={corpus_file}", "train.steps=60"]
    result = run_cli("run", "--db", str(db), "--quiet", "--name", "shared", *sets_args(sets))
    assert result.returncode == 0, result.stderr
    return db, 1
