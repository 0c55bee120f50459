"""Corpus loading, the train / held-out split, and batches of random windows kept on the device.

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

from mlmlab.errors import DataError
from mlmlab.paths import cache_dir

TEXT_SUFFIXES = {".txt", ".md"}
BLOCK_CHARS = 1024  # held-out text is chosen in blocks this long, spread through the corpus
_GOLDEN = 0.6180339887498949
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def load_corpus(source: str, max_chars: int = 0) -> str:
    """The text of `source`: 'builtin', a UTF-8 file, or a folder of .txt/.md files."""
    text = builtin_corpus() if source == "builtin" else _read_source(Path(source).expanduser())
    if max_chars:
        text = text[:max_chars]
    if not text.strip():
        raise DataError(f"data.source = {source!r}: the corpus is empty")
    return text


def _read_source(path: Path) -> str:
    if path.is_file():
        return _read_text_file(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"data.source = '{path}': the folder holds no .txt or .md files")
        return "\n\n".join(_read_text_file(p) for p in files)
    raise DataError(f"data.source = '{path}': no such file or folder")


def _read_text_file(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"data file '{path}': cannot read ({exc.strerror})") from None
    if b"\x00" in raw[:65536]:
        raise DataError(f"data file '{path}': looks binary (NUL bytes); give UTF-8 text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"data file '{path}': not UTF-8 text (bad byte at offset {exc.start})") from None


def builtin_corpus() -> str:
    cached = cache_dir() / f"builtin-corpus-py{sys.version_info.major}.{sys.version_info.minor}.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = _build_builtin_corpus()
    _write_atomic(cached, text)
    return text


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
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            tmp.write(text)
        os.replace(tmp.name, path)
    except OSError:
        pass  # the cache is an optimisation; an unwritable cache folder only costs time


def split_text(text: str, valid_fraction: float, min_chars: int) -> tuple[str, str]:
    """Deterministic train / held-out split in blocks spread evenly through the corpus.

    Each block goes to the held-out side when the fractional part of i·φ falls below
    `valid_fraction` (a low-discrepancy sequence), so the held-out text samples every part of the
    corpus rather than only its tail. Small corpora fall back to holding out the tail.
    """
    n_blocks = len(text) // BLOCK_CHARS
    train_parts: list[str] = []
    valid_parts: list[str] = []
    if n_blocks >= 20:
        for i in range(0, len(text), BLOCK_CHARS):
            side = valid_parts if ((i // BLOCK_CHARS + 1) * _GOLDEN) % 1 < valid_fraction else train_parts
            side.append(text[i : i + BLOCK_CHARS])
    else:
        cut = len(text) - max(int(len(text) * valid_fraction), min_chars)
        train_parts, valid_parts = [text[:cut]], [text[cut:]]
    train, valid = "".join(train_parts), "".join(valid_parts)
    if len(train) < min_chars or len(valid) < min_chars:
        raise DataError(
            f"the corpus has {len(text)} characters: too short for train.seq_len windows "
            f"(needs at least {min_chars} characters on each side of the train / held-out split)"
        )
    return train, valid


class WindowSampler:
    """Random `seq_len` windows of a token tensor, drawn on its device from a seeded generator."""

    def __init__(self, ids, generator):
        import torch

        self.ids = ids
        self.generator = generator
        self._torch = torch

    def batch(self, batch_size: int, seq_len: int):
        torch = self._torch
        high = self.ids.numel() - seq_len + 1
        starts = torch.randint(0, high, (batch_size, 1), generator=self.generator, device=self.ids.device)
        return self.ids[starts + torch.arange(seq_len, device=self.ids.device)]
