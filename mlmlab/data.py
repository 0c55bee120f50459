"""The built-in corpus, the train / held-out split, and batches of random windows.

Corpora are read as streams (`corpus`) into the token cache (`token_cache`); `load_corpus` gives the
same text in memory for tests and small tools.

The built-in corpus is text every Python install already has: the interactive-help topics of
`pydoc_data` plus the docstrings of the standard library, read with `ast` (no module is imported).
It is built once and cached, because parsing the standard library takes a few seconds.
"""

from __future__ import annotations

import ast
import os
import sys
import sysconfig
import tempfile
from pathlib import Path

from mlmlab.corpus import open_corpus, split_segments
from mlmlab.errors import DataError
from mlmlab.paths import cache_dir, write_text_atomic

_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def load_corpus(source: str, max_chars: int = 0) -> str:
    """The text of `source` in memory: 'builtin', a UTF-8 file, or a folder of .txt/.md files.
    Runs do not call this (they stream the corpus into the token cache); tests and small tools do."""
    text = "".join(piece for piece, _ in open_corpus(source).pieces(max_chars))
    if not text.strip():
        raise DataError(f"data.source = {source!r}: the corpus is empty")
    return text


def builtin_corpus_file() -> Path:
    """The built-in corpus as a file (built on first use), so it streams like any other source."""
    cached = _builtin_path()
    if not cached.is_file():
        text = _build_builtin_corpus()
        _write_atomic(cached, text)
        if not cached.is_file():  # an unwritable cache folder: a private temporary copy
            cached = Path(tempfile.gettempdir()) / f"mlmlab-{os.getuid()}-{cached.name}"
            _write_atomic(cached, text)
    return cached


def _builtin_path() -> Path:
    return cache_dir() / f"builtin-corpus-py{sys.version_info.major}.{sys.version_info.minor}.txt"


def builtin_corpus() -> str:
    return builtin_corpus_file().read_text(encoding="utf-8")


def _build_builtin_corpus() -> str:
    import pydoc_data.topics

    parts = [pydoc_data.topics.topics[name].strip() for name in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_DIRS.intersection(path.relative_to(stdlib).parts):
            continue
        parts.extend(_docstrings(path))
    return "\n\n".join(parts) + "\n"


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    docs = (ast.get_docstring(node) for node in ast.walk(tree) if isinstance(node, kinds))
    return [doc for doc in docs if doc and len(doc) > 40]


def _write_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except OSError:
        pass  # the cache is an optimisation; an unwritable cache folder only costs time


def split_text(text: str, valid_fraction: float, min_chars: int) -> tuple[str, str]:
    """The train / held-out split of a text in memory (see `split_segments`)."""
    train, valid = split_segments(len(text), valid_fraction, min_chars)
    return "".join(text[a:b] for a, b in train), "".join(text[a:b] for a, b in valid)


class WindowSampler:
    """Random `seq_len` windows of a token sequence, drawn from a seeded generator.

    `ids` is a 1-D tensor (windows are gathered on its device, as before the token cache) or a
    `TokenView` over the cache's memmap (windows are gathered from the page cache, converted to
    int64 per batch, and land on the generator's device); either way the starts come from the same
    `torch.randint` call, so a seed gives the same windows from both.
    """

    def __init__(self, ids, generator):
        import torch

        self.ids = ids
        self.generator = generator
        self._torch = torch

    def batch(self, batch_size: int, seq_len: int):
        torch = self._torch
        device = self.ids.device if isinstance(self.ids, torch.Tensor) else self.generator.device
        high = self.ids.numel() - seq_len + 1
        starts = torch.randint(0, high, (batch_size, 1), generator=self.generator, device=device)
        positions = starts + torch.arange(seq_len, device=device)
        return self.ids[positions] if isinstance(self.ids, torch.Tensor) else self.ids.gather(positions)
