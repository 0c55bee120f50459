"""A corpus read as a stream: its files, their text in bounded chunks, its content hash, its characters.

Nothing here holds the whole corpus: every pass reads `chunk_bytes` at a time, so memory is bounded by
the chunk, not by the corpus. The text a stream yields is exactly what `load_corpus` returns (files
joined by a blank line, a UTF-8 BOM dropped, cut at `max_chars`), so a run's tokens do not depend on
whether its corpus went through the cache.

Documents: the files of a folder, or the blank-line-separated paragraphs of one file (and of the
built-in corpus, whose parts are joined by blank lines).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlmlab.errors import DataError

TEXT_SUFFIXES = {".txt", ".md"}
CHUNK_BYTES = 4 << 20  # 4 MiB read at a time: big enough for numpy to amortise, small next to any corpus
JOIN = "\n\n"  # between the files of a folder, as `load_corpus` joins them
BLOCK_CHARS = 1024  # held-out text is chosen in blocks this long, spread through the corpus
GOLDEN = 0.6180339887498949
_NUL_CHECK_BYTES = 65536
_NEWLINE = 10


@dataclass(frozen=True)
class Corpus:
    """Where a corpus's text comes from: its files in reading order and how documents are told apart."""

    source: str  # as the config says it: 'builtin', a file or a folder
    files: tuple[Path, ...]
    documents: str  # 'files' (a folder: each file is one) or 'paragraphs' (blank-line separated)

    @property
    def total_bytes(self) -> int:
        return sum(_size(p) for p in self.files)

    def fingerprint(self) -> str:
        """Names, sizes and modification times: a cheap pre-check for whether the content changed."""
        stats = [(str(p.resolve()), *_stat(p)) for p in self.files]
        return stable_digest({"source": self.source, "files": stats, "py": sys.version_info[:2]})

    def content_hash(self, progress: Callable[[int], None] | None = None, chunk_bytes: int = CHUNK_BYTES) -> str:
        """A hash over every byte read, each file's name relative to the folder, and the document rule."""
        h = hashlib.blake2b(digest_size=20)
        h.update(self.documents.encode())
        root = Path(self.source).expanduser() if self.documents == "files" else None
        for path in self.files:
            h.update(b"\x00file\x00" + (str(path.relative_to(root)) if root else "").encode() + b"\x00")
            with _open(path) as f:
                while block := f.read(chunk_bytes):
                    h.update(block)
                    if progress:
                        progress(len(block))
        return h.hexdigest()

    def pieces(self, max_chars: int = 0, chunk_bytes: int = CHUNK_BYTES,
               progress: Callable[[int], None] | None = None) -> Iterator[tuple[str, bool]]:
        """The corpus's text in chunks, each with whether a file's own text starts there."""
        left = max_chars if max_chars > 0 else None
        for text, starts_file in self._raw_pieces(chunk_bytes, progress):
            if left is not None:
                text = text[:left]
                left -= len(text)
            if text:
                yield text, starts_file
            if left == 0:
                return

    def _raw_pieces(self, chunk_bytes: int, progress) -> Iterator[tuple[str, bool]]:
        for i, path in enumerate(self.files):
            if i:
                yield JOIN, False
            for j, text in enumerate(_decode_file(path, chunk_bytes, progress)):
                yield text, j == 0


def open_corpus(source: str) -> Corpus:
    """The corpus `source` names: 'builtin', a UTF-8 file, or a folder of .txt/.md files (sorted)."""
    if source == "builtin":
        from mlmlab.data import builtin_corpus_file

        return Corpus(source, (builtin_corpus_file(),), "paragraphs")
    path = Path(source).expanduser()
    if path.is_file():
        return Corpus(source, (path,), "paragraphs")
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file()))
        if not files:
            raise DataError(f"data.source = '{path}': the folder holds no .txt or .md files")
        return Corpus(source, files, "files")
    raise DataError(f"data.source = '{path}': no such file or folder")


def code_points(text: str) -> np.ndarray:
    """The text's code points as uint32, without a Python loop over characters."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def paragraph_starts(cps: np.ndarray, offset: int, tail: np.ndarray) -> np.ndarray:
    """Positions (absolute: `offset` is the chunk's first) where a paragraph starts: the first
    non-newline after two or more newlines. `tail` is the previous chunk's last two code points
    (two zeros before the first chunk), so a boundary that straddles two chunks is found once."""
    nl = np.concatenate([tail, cps]) == _NEWLINE
    return np.flatnonzero(~nl[2:] & nl[:-2] & nl[1:-1]).astype(np.int64) + offset


def held_out_blocks(first_block: int, n_blocks: int, valid_fraction: float) -> np.ndarray:
    """Whether each block goes to the held-out side: frac(i·φ) < valid_fraction for block number i (1-based)."""
    i = np.arange(first_block + 1, first_block + n_blocks + 1, dtype=np.float64)
    return np.mod(i * GOLDEN, 1.0) < valid_fraction


def split_segments(n: int, valid_fraction: float, min_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train / held-out split of positions 0..n, as (start, stop) rows for each side.

    Blocks of BLOCK_CHARS positions go to the held-out side when the fractional part of i·φ falls
    below `valid_fraction` (a low-discrepancy sequence), so the held-out text samples every part of
    the corpus rather than only its tail. Small corpora fall back to holding out the tail. With the
    char tokenizer a position is a character, so this is the split every earlier run used.
    """
    n_blocks = n // BLOCK_CHARS
    if n_blocks >= 20:
        starts = np.arange(0, n, BLOCK_CHARS, dtype=np.int64)
        valid = held_out_blocks(0, len(starts), valid_fraction)
        train_segs, valid_segs = _runs(starts, ~valid, n), _runs(starts, valid, n)
    else:
        cut = max(n - max(int(n * valid_fraction), min_len), 0)
        train_segs, valid_segs = np.array([[0, cut]], np.int64), np.array([[cut, n]], np.int64)
    n_train = int((train_segs[:, 1] - train_segs[:, 0]).sum())
    if n_train < min_len or n - n_train < min_len:
        raise DataError(
            f"the corpus has {n} characters: too short for train.seq_len windows "
            f"(needs at least {min_len} characters on each side of the train / held-out split)"
        )
    return train_segs, valid_segs


def _runs(starts: np.ndarray, chosen: np.ndarray, n: int) -> np.ndarray:
    """Maximal runs of consecutive chosen blocks, as (start, stop) rows."""
    flags = np.concatenate([[False], chosen, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flags))
    bounds = np.append(starts, n)
    return np.stack([bounds[edges[0::2]], bounds[edges[1::2]]], axis=1).astype(np.int64)


class TrainText:
    """The training side of the split as a stream of texts (runs of consecutive training blocks), in
    one pass: what a subword vocabulary is trained on and what char counts are counted over. After
    iterating, `n` is the corpus's length in characters.

    `cut(text)` is the length of the longest prefix of `text` that may be cut off without changing
    what a tokenizer makes of either side (0: none; `subword.safe_cut`). Given, a run is yielded
    in pieces cut only there (or, past 4 chunks without such a point, anywhere), so what a trainer
    counts does not depend on where `chunk_bytes` reads fall. Without it, pieces end at chunk edges."""

    def __init__(self, corpus: Corpus, max_chars: int, valid_fraction: float, min_len: int,
                 chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None,
                 cut: Callable[[str], int] | None = None):
        self.corpus, self.max_chars, self.valid_fraction, self.min_len = corpus, max_chars, valid_fraction, min_len
        self.chunk_bytes, self.progress, self.n, self.cut = chunk_bytes, progress, 0, cut

    def __iter__(self) -> Iterator[str]:
        small: list[str] = []  # a corpus under 20 blocks is split by its tail, known only at the end
        pos, seen_text, carry = 0, False, ""  # carry: the open run's text after its last cut
        for text, _ in self.corpus.pieces(self.max_chars, self.chunk_bytes, self.progress):
            seen_text = seen_text or bool(text.strip())
            if small is not None:
                small.append(text)
                if pos + len(text) < 20 * BLOCK_CHARS:
                    pos += len(text)
                    continue
                text, pos, small = "".join(small), 0, None  # certainly split by blocks: replay the buffer
            for part, closed in self._train_runs(text, pos):
                ready, carry = self._ready(carry + part, closed)
                if ready:
                    yield ready
            pos += len(text)
        if carry:
            yield carry
        if not seen_text:
            raise DataError(f"data.source = {self.corpus.source!r}: the corpus is empty")
        if small is not None:  # tail split: the training prefix
            text = "".join(small)
            pos = len(text)
            train, _ = split_segments(pos, self.valid_fraction, self.min_len)
            if train[0][1]:
                yield text[: int(train[0][1])]
        else:
            split_segments(pos, self.valid_fraction, self.min_len)  # each side long enough
        self.n = pos

    def _ready(self, buf: str, closed: bool) -> tuple[str, str]:
        """(what to yield now, what to carry on) of an open run's text; a closed run is all ready."""
        if closed or self.cut is None:
            return buf, ""
        at = self.cut(buf) or (len(buf) if len(buf) > 4 * self.chunk_bytes else 0)
        return buf[:at], buf[at:]

    def _train_runs(self, text: str, pos: int) -> Iterator[tuple[str, bool]]:
        """The parts of `text` (starting at corpus position `pos`) in training blocks, joined where
        consecutive, each with whether its run ends there: ("", True) where a held-out block
        begins (it closes a run carried from the previous text), (part, False) for a run still open
        at the text's end."""
        first, last = pos // BLOCK_CHARS, (pos + len(text) - 1) // BLOCK_CHARS
        valid = held_out_blocks(first, last - first + 1, self.valid_fraction)
        run_start = None
        for b, held_out in enumerate(valid, first):
            lo, hi = max(b * BLOCK_CHARS - pos, 0), min((b + 1) * BLOCK_CHARS - pos, len(text))
            if not held_out and run_start is None:
                run_start = lo
            elif held_out:
                yield ("" if run_start is None else text[run_start:lo]), True
                run_start = None
        if run_start is not None:
            yield text[run_start:hi], False


def train_char_counts(corpus: Corpus, max_chars: int, valid_fraction: float, min_len: int,
                      chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None) -> tuple[dict[str, int], int]:
    """Character counts over the training side of the split, and the corpus's length, in one
    streaming pass: exactly the counts `CharTokenizer.from_text(split_text(text)[0])` sees, without
    the text in memory."""
    counts = np.zeros(0, dtype=np.int64)  # grows to the largest code point seen, not to all of Unicode
    train = TrainText(corpus, max_chars, valid_fraction, min_len, chunk_bytes, progress)
    for text in train:
        counts = _add_counts(counts, code_points(text))
    return {chr(c): int(counts[c]) for c in np.flatnonzero(counts)}, train.n


def _add_counts(counts: np.ndarray, cps: np.ndarray) -> np.ndarray:
    new = np.bincount(cps)
    if len(new) > len(counts):
        counts = np.concatenate([counts, np.zeros(len(new) - len(counts), np.int64)])
    counts[: len(new)] += new
    return counts


def _decode_file(path: Path, chunk_bytes: int, progress: Callable[[int], None] | None) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    offset = 0
    with _open(path) as f:
        while True:
            block = f.read(chunk_bytes)
            if offset < _NUL_CHECK_BYTES and b"\x00" in block[: _NUL_CHECK_BYTES - offset]:
                raise DataError(f"data file '{path}': looks binary (NUL bytes); give UTF-8 text")
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                raise DataError(f"data file '{path}': not UTF-8 text (bad byte at offset {max(bad, 0)})") from None
            offset += len(block)
            if progress and block:
                progress(len(block))
            if text:
                yield text
            if not block:
                return


def _open(path: Path):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise DataError(f"data file '{path}': cannot read ({exc.strerror})") from None


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DataError(f"data file '{path}': cannot read ({exc.strerror})") from None
    return st.st_size, st.st_mtime_ns


def _size(path: Path) -> int:
    return _stat(path)[0]


def stable_digest(obj) -> str:
    """A short hash of a JSON-able value, the same in every process (cache keys and memo names)."""
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=20).hexdigest()
