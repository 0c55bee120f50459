"""The token cache: a corpus tokenised once, in a streaming pass, into a file of token ids on disk.

A cache file is a 4096-byte header (magic, then JSON: key, dtype, token and document counts), the
ids (uint16 when the vocabulary fits, else uint32), the documents' start offsets (int64) and, for a
subword tokenizer, the token index where each 1024-character block of the text begins (int64): the
train / held-out split is drawn over characters, so the held-out text is the same whichever
tokenizer reads it, and the vocabulary is learned from the training characters only. It is
named and checked by its key, a hash of the corpus's content, `max_chars` and the tokenizer's
serialised form (`tokenizer.to_dict()`), so another tokenizer kind plugs in by its own dict. A file
is written under a temporary name and renamed, so none is ever half-written; one whose header or
size does not match is rebuilt, with one line saying so.

Documents are recorded as an offsets array, not a separator token: a new special token would shift
every character's id and break the vocabularies old runs and checkpoints carry, and the token stream
stays exactly the text earlier runs trained on (files still joined by a blank line).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mlmlab.corpus import (BLOCK_CHARS, CHUNK_BYTES, Corpus, TrainText, code_points, open_corpus, paragraph_starts,
                           split_segments, stable_digest, train_char_counts)
from mlmlab.errors import DataError
from mlmlab.paths import cache_dir, write_text_atomic
from mlmlab.tokenizer import DEFAULT_VOCAB_SIZE, N_SPECIAL, build_tokenizer, tokenizer_from_dict

MAGIC = b"MLMLAB-TOKENS-1\n"
HEADER_BYTES = 4096
FORMAT = 1
SUBWORD_RECIPE = 2  # bump when subword.py changes how a vocabulary is trained (2: texts cut only at safe_cut points)


@dataclass
class TokenCache:
    path: Path
    ids: np.ndarray  # read-only memmap, 1-D
    docs: np.ndarray  # read-only memmap of document start offsets, int64
    built: bool  # tokenised by this call (False: an existing file was reused)
    blocks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # subword: first token of each char block
    n_chars: int = 0  # subword: the text's length in characters (char: n_tokens)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size


def cache_key(content_hash: str, max_chars: int, tokenizer) -> str:
    return stable_digest({"format": FORMAT, "content": content_hash, "max_chars": max_chars, "tokenizer": tokenizer.to_dict()})


def tokens_dir() -> Path:
    """cache_dir()/tokens, or a private temporary folder when the cache folder cannot be written."""
    for folder in (cache_dir() / "tokens", Path(tempfile.gettempdir()) / f"mlmlab-{os.getuid()}-tokens"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise DataError(f"token cache: cannot write {cache_dir() / 'tokens'} nor a temporary folder")


def content_hash(corpus: Corpus, progress: Callable[[int], None] | None = None, chunk_bytes: int = CHUNK_BYTES) -> str:
    """The corpus's content hash, remembered under its fingerprint (names, sizes, mtimes) so a
    later run with unchanged files skips reading them."""
    memo = tokens_dir() / f"fingerprint-{corpus.fingerprint()}.json"
    try:
        return json.loads(memo.read_text())["content"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = corpus.content_hash(progress, chunk_bytes)
    _write_json(memo, {"content": digest, "source": corpus.source})
    return digest


def load_or_build(corpus: Corpus, tokenizer, max_chars: int = 0, *, digest: str,
                  chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None,
                  on_message: Callable[[str], None] = lambda text: None) -> TokenCache:
    """The cache of `corpus` under `tokenizer`: reused when a valid file exists, else built."""
    key = cache_key(digest, max_chars, tokenizer)
    path = tokens_dir() / f"{key}.tok"
    if path.exists():
        try:
            return open_cache(path, key)
        except DataError as exc:
            on_message(f"{exc}; rebuilding it")
    write_cache(path, key, corpus, tokenizer, max_chars, chunk_bytes, progress)
    return replace(open_cache(path, key), built=True)


def prepare_corpus(source: str, tokenizer=None, *, kind: str = "char", vocab_size: int = 0, max_chars: int = 0,
                   valid_fraction: float = 0.05, min_len: int = 65, chunk_bytes: int = CHUNK_BYTES,
                   progress: Callable[[int], None] | None = None,
                   on_message: Callable[[str], None] = lambda text: None) -> tuple[object, TokenCache]:
    """The tokenizer (given, e.g. a resumed run's, or built from the training split) and the token
    cache of `source`: what a run's start and `mlmlab data` both call. Torch-free."""
    corpus = open_corpus(source)
    digest = content_hash(corpus, progress, chunk_bytes)
    tokenizer = tokenizer or corpus_tokenizer(corpus, digest, kind, max_chars, valid_fraction, min_len, chunk_bytes, progress,
                                              vocab_size=vocab_size)
    return tokenizer, load_or_build(corpus, tokenizer, max_chars, digest=digest, chunk_bytes=chunk_bytes, progress=progress,
                                    on_message=on_message)


def corpus_tokenizer(corpus: Corpus, digest: str, kind: str, max_chars: int, valid_fraction: float, min_len: int,
                     chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None, *, vocab_size: int = 0):
    """The tokenizer a new run builds from the corpus's training split, remembered by content so a
    second run does not read the corpus again: char counts the split's characters, a subword kind
    is trained on its text by the `tokenizers` library (streamed, never the whole corpus at once)."""
    parts = [FORMAT, kind, digest, max_chars, valid_fraction]
    if kind != "char":  # the recipe: a changed pre-tokenizer or trainer must not reuse an older vocabulary
        parts += [vocab_size or DEFAULT_VOCAB_SIZE, SUBWORD_RECIPE]
    memo = tokens_dir() / f"vocab-{stable_digest(parts)}.json"
    try:
        saved = json.loads(memo.read_text())
        # min_len (the longest window) decides the split only of a corpus under 20 blocks
        if saved["n"] >= 20 * BLOCK_CHARS or saved["min_len"] == min_len:
            return tokenizer_from_dict(saved["tokenizer"])
    except (OSError, ValueError, KeyError, TypeError, DataError):
        pass
    if kind == "char":
        counts, n = train_char_counts(corpus, max_chars, valid_fraction, min_len, chunk_bytes, progress)
        tokenizer = build_tokenizer(kind, counts)
    else:
        from mlmlab.subword import safe_cut, train_subword

        train = TrainText(corpus, max_chars, valid_fraction, min_len, chunk_bytes, progress, cut=safe_cut)
        tokenizer, n = train_subword(kind, train, vocab_size or DEFAULT_VOCAB_SIZE), train.n
    _write_json(memo, {"tokenizer": tokenizer.to_dict(), "n": n, "min_len": min_len})
    return tokenizer


def open_cache(path: Path, key: str) -> TokenCache:
    """The ids, document offsets and block table of a cache file, after checking its header and size."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"token cache {path.name}: cannot read ({exc.strerror})") from None
    meta = _parse_header(head, path)
    if meta.get("key") != key:
        raise DataError(f"token cache {path.name}: made for another corpus or tokenizer")
    dtype, n, n_docs, n_blocks = np.dtype(meta["dtype"]), meta["n_tokens"], meta["n_docs"], meta["n_blocks"]
    expected = HEADER_BYTES + n * dtype.itemsize + (n_docs + n_blocks) * 8
    if size != expected:
        raise DataError(f"token cache {path.name}: {size} bytes, the header says {expected}")
    offset = HEADER_BYTES + n * dtype.itemsize
    ids = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n,)) if n else np.zeros(0, dtype)
    docs = np.memmap(path, dtype=np.int64, mode="r", offset=offset, shape=(n_docs,)) if n_docs else np.zeros(0, np.int64)
    blocks = np.array(np.memmap(path, dtype=np.int64, mode="r", offset=offset + n_docs * 8, shape=(n_blocks,))) \
        if n_blocks else np.zeros(0, np.int64)
    return TokenCache(path, ids, docs, False, blocks, meta.get("n_chars", n))


def _parse_header(head: bytes, path: Path) -> dict:
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        raise DataError(f"token cache {path.name}: not a token cache file (bad header)")
    try:
        meta = json.loads(head[len(MAGIC):].decode("utf-8").strip())
        meta.setdefault("n_blocks", 0)  # char caches have no block table
        ok = meta["dtype"] in ("uint16", "uint32") and all(isinstance(meta[k], int) and meta[k] >= 0
                                                           for k in ("n_tokens", "n_docs", "n_blocks"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise DataError(f"token cache {path.name}: its header does not parse")
    return meta


def write_cache(path: Path, key: str, corpus: Corpus, tokenizer, max_chars: int, chunk_bytes: int,
                progress: Callable[[int], None] | None) -> None:
    """Tokenise the corpus chunk by chunk into `path` (temp file, then rename): memory holds one
    chunk; document offsets are spooled to a second temp file and appended at the end, then the
    block table (a subword cache's; one entry per 1024 characters)."""
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)
    folder = path.parent
    _remove_stale_temp_files(folder)
    ids_tmp = tempfile.NamedTemporaryFile(dir=folder, prefix=path.stem[:16], suffix=".tmp", delete=False)
    docs_tmp = tempfile.NamedTemporaryFile(dir=folder, prefix=path.stem[:16], suffix=".docs.tmp", delete=False)
    tokenise = _tokenise_chars if tokenizer.kind == "char" else _tokenise_subwords
    try:
        with ids_tmp, docs_tmp:
            ids_tmp.write(b"\0" * HEADER_BYTES)
            counts = tokenise(corpus, tokenizer, max_chars, chunk_bytes, progress, dtype, ids_tmp, docs_tmp)
            docs_tmp.flush()
            with open(docs_tmp.name, "rb") as spooled:
                shutil.copyfileobj(spooled, ids_tmp, chunk_bytes)
            counts.blocks.tofile(ids_tmp)
            ids_tmp.seek(0)
            ids_tmp.write(_header(key, dtype, counts, tokenizer, corpus))
        os.replace(ids_tmp.name, path)
    except BaseException:
        _remove(ids_tmp.name)
        raise
    finally:
        _remove(docs_tmp.name)


@dataclass
class _Counts:
    n_tokens: int
    n_docs: int
    n_chars: int
    blocks: np.ndarray  # int64; empty for char caches, whose tokens are the characters


def _tokenise_chars(corpus: Corpus, tokenizer, max_chars: int, chunk_bytes: int, progress, dtype, ids_out, docs_out) -> _Counts:
    """The streaming pass; one encoder call per chunk, no loop per character."""
    pos, n_docs, seen_text = 0, 0, False
    tail = np.zeros(2, np.uint32)  # the last two code points of the previous chunk (paragraph rule)
    for text, starts_file in corpus.pieces(max_chars, chunk_bytes, progress):
        cps = code_points(text)
        starts, tail = _doc_starts(corpus, cps, pos, starts_file, tail)
        seen_text = seen_text or bool(text.strip())
        tokenizer.encode_array(cps).astype(dtype, copy=False).tofile(ids_out)
        starts.tofile(docs_out)
        pos, n_docs = pos + len(cps), n_docs + len(starts)
    if not seen_text:
        raise DataError(f"data.source = {corpus.source!r}: the corpus is empty")
    return _Counts(pos, n_docs, pos, np.zeros(0, np.int64))


def _doc_starts(corpus: Corpus, cps: np.ndarray, pos: int, starts_file: bool, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where documents start in a chunk of code points at character `pos`, and the new paragraph tail."""
    if corpus.documents == "files":
        starts = np.array([pos] if starts_file else [], np.int64)
    else:
        starts = paragraph_starts(cps, pos, tail)
        tail = np.concatenate([tail, cps])[-2:]
    if pos == 0:
        starts = np.unique(np.concatenate([[0], starts])).astype(np.int64)
    return starts, tail


def _tokenise_subwords(corpus: Corpus, tokenizer, max_chars: int, chunk_bytes: int, progress, dtype, ids_out,
                       docs_out) -> _Counts:
    """The streaming pass of a subword tokenizer. Each chunk is cut before its last newline that
    follows a non-space (the rest waits for the next chunk: no piece spans such a cut) and encoded
    line by line in one batch. Document
    starts and block boundaries, found in characters, become the index of the first token at or
    after them."""
    from mlmlab.subword import safe_cut, split_lines  # the tokenizers library, only for subword corpora

    chars_done, tokens_done, n_docs, real = 0, 0, 0, False
    carry, pending_docs, blocks = "", [], []
    tail = np.zeros(2, np.uint32)
    for text, starts_file in _with_end(corpus.pieces(max_chars, chunk_bytes, progress)):
        if text:
            starts, tail = _doc_starts(corpus, code_points(text), chars_done + len(carry), starts_file, tail)
            pending_docs.append(starts)
        buf = carry + text
        cut = len(buf) if not text else safe_cut(buf) or (len(buf) if len(buf) > 4 * chunk_bytes else 0)
        portion, carry = buf[:cut], buf[cut:]
        if not portion:
            continue
        ids, starts = tokenizer.encode_lines(split_lines(portion))
        real = real or bool((ids >= N_SPECIAL).any())
        ids.astype(dtype, copy=False).tofile(ids_out)
        end = chars_done + len(portion)
        docs = np.concatenate(pending_docs)
        here = docs[docs < end] if text else docs
        pending_docs = [docs[docs >= end]] if text else []
        doc_tokens = np.unique(_first_token_at(here, starts, chars_done, tokens_done))
        doc_tokens.tofile(docs_out)
        n_docs += len(doc_tokens)
        first_block = -(-chars_done // BLOCK_CHARS)
        bounds = np.arange(first_block * BLOCK_CHARS, end, BLOCK_CHARS, dtype=np.int64)
        blocks.append(_first_token_at(bounds, starts, chars_done, tokens_done))
        chars_done, tokens_done = end, tokens_done + len(ids)
    if not chars_done or not real:
        empty = "the corpus is empty" if not chars_done else f"nothing but special tokens after {tokenizer.kind} tokenisation"
        raise DataError(f"data.source = {corpus.source!r}: {empty}")
    return _Counts(tokens_done, n_docs, chars_done, np.concatenate(blocks) if blocks else np.zeros(0, np.int64))


def _first_token_at(chars: np.ndarray, starts: np.ndarray, chars_done: int, tokens_done: int) -> np.ndarray:
    """The index of the first token starting at or after each character position (int64)."""
    return (tokens_done + np.searchsorted(starts, chars - chars_done, side="left")).astype(np.int64)


def _with_end(pieces):
    """The pieces, then ("", False): the signal to encode what is still carried."""
    yield from pieces
    yield "", False


def _header(key: str, dtype, counts: _Counts, tokenizer, corpus: Corpus) -> bytes:
    meta = {"key": key, "dtype": dtype.name, "n_tokens": counts.n_tokens, "n_docs": counts.n_docs,
            "n_blocks": len(counts.blocks), "n_chars": counts.n_chars, "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.kind, "source": corpus.source, "documents": corpus.documents}
    body = MAGIC + json.dumps(meta).encode()
    if len(body) > HEADER_BYTES - 1:  # only a very long source path gets here
        meta["source"] = meta["source"][-256:]
        body = MAGIC + json.dumps(meta).encode()
    return body + b" " * (HEADER_BYTES - 1 - len(body)) + b"\n"


def _write_json(path: Path, obj) -> None:
    try:
        write_text_atomic(path, json.dumps(obj))
    except OSError:
        pass  # a memo only saves time


def _remove_stale_temp_files(folder: Path, older_than_s: float = 86400) -> None:
    """Temp files a killed build left; a day old, so a build still under way elsewhere keeps its own."""
    for tmp in folder.glob("*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > older_than_s:
                tmp.unlink()
        except OSError:
            pass


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def split_views(cache: TokenCache, valid_fraction: float, min_len: int) -> tuple["TokenView", "TokenView"]:
    """The train and held-out sides of the cache. The split is drawn over characters (for a char
    cache its tokens), so a subword run holds out the very text a char run holds out; a token
    belongs to the side where it starts."""
    if not len(cache.blocks):
        train, valid = split_segments(cache.n_tokens, valid_fraction, min_len)
    else:
        train, valid = (_token_segments(cache, segs) for segs in split_segments(cache.n_chars, valid_fraction, min_len))
        n_train, n_valid = (int((segs[:, 1] - segs[:, 0]).sum()) for segs in (train, valid))
        if min(n_train, n_valid) < min_len:
            raise DataError(f"the corpus gives {cache.n_tokens:,} tokens ({n_train:,} to train on, {n_valid:,} held out): too "
                            f"short for train.seq_len windows (needs at least {min_len} tokens on each side of the split)")
    return TokenView(cache.ids, train), TokenView(cache.ids, valid)


def _token_segments(cache: TokenCache, char_segments: np.ndarray) -> np.ndarray:
    """(start, stop) character rows as token rows, through the block table; a boundary inside a
    block (the tail split of a small corpus) is placed in proportion."""
    def token_index(c: int) -> int:
        if c >= cache.n_chars:
            return cache.n_tokens
        b, r = divmod(int(c), BLOCK_CHARS)
        lo = int(cache.blocks[b])
        hi = int(cache.blocks[b + 1]) if b + 1 < len(cache.blocks) else cache.n_tokens
        return lo + (hi - lo) * r // BLOCK_CHARS

    rows = np.array([[token_index(a), token_index(b)] for a, b in char_segments], np.int64).reshape(-1, 2)
    return rows[rows[:, 1] > rows[:, 0]]


DEVICE_COPY_MAX_TOKENS = 1 << 28  # 2 GiB of int64 on the device; a larger split is read from the memmap per batch


class TokenView:
    """One side of the split: the cache's ids at the positions of some (start, stop) segments, read
    as one sequence. Windows may cross from one segment into the next, as they crossed the blocks of
    the held-out split when the training text was a string; nothing is loaded until asked for."""

    def __init__(self, ids: np.ndarray, segments: np.ndarray):
        self.ids = ids
        self.starts = segments[:, 0].astype(np.int64)
        lengths = segments[:, 1] - segments[:, 0]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # where each segment begins in the view

    def numel(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.numel()

    def corpus_index(self, positions: np.ndarray) -> np.ndarray:
        seg = np.searchsorted(self.offsets, positions, side="right") - 1
        return self.starts[seg] + (positions - self.offsets[seg])

    def gather(self, positions):
        """Token ids at view positions (a tensor of any shape) as an int64 tensor on its device."""
        import torch

        flat = positions.reshape(-1).cpu().numpy()
        out = np.asarray(self.ids[self.corpus_index(flat)]).astype(np.int64)
        return torch.from_numpy(out).reshape(positions.shape).to(positions.device, non_blocking=True)

    def __getitem__(self, item):
        import torch

        if not isinstance(item, slice):
            raise TypeError("a TokenView takes slices; use gather() for positions")
        lo, hi, step = item.indices(self.numel())
        return self.gather(torch.arange(lo, hi, step, dtype=torch.long))

    def tensor(self):
        """The whole view as one int64 tensor in memory (for small corpora and device copies)."""
        return self[:]

    # Duck-typed like the CPU tensor `to_device` expects, so the trainer's one copy to the device
    # stays as it was: on the CPU the view itself is used (the OS page cache holds the ids); on an
    # accelerator the view is copied once, when it fits DEVICE_COPY_MAX_TOKENS.
    @property
    def device(self):
        import torch

        return torch.device("cpu")

    def pin_memory(self):
        return self.tensor().pin_memory() if self.numel() <= DEVICE_COPY_MAX_TOKENS else self

    def to(self, device, non_blocking: bool = False):
        import torch

        if torch.device(device).type == "cpu":
            return self
        return self.tensor().to(device, non_blocking=non_blocking) if self.numel() <= DEVICE_COPY_MAX_TOKENS else self

