"""Subword tokenizers: WordPiece (BERT), BPE (SentencePiece-style `▁`) and byte-level BPE (RoBERTa),
trained and run by the Hugging Face `tokenizers` library; nothing here hand-writes BPE or WordPiece.

A `SubwordTokenizer` answers the same questions as `CharTokenizer` (encode, decode, token, ids_of,
to_dict), so masking, evaluation, samples and the cache take either. Its whole state is the
library's `tokenizer.json` text, saved in the run row and in every checkpoint.

Special tokens are given to the trainer first and in order, so [PAD], [MASK] and [UNK] keep ids
0, 1, 2 and "a real token" stays `id >= N_SPECIAL`. No post-processor adds [CLS] / [SEP]: the model
reads windows of the token stream, as with characters.

`token(id)` is the piece as a reader expects it, not the vocabulary's spelling: a piece that starts
a word carries its leading space (" the"), a WordPiece continuation drops its `##` ("ing"), and a
byte-level piece is decoded from its byte alphabet (`Ġ` is a space, `Ċ` a newline). Joined, the
pieces of a sentence read as the sentence. `raw_token(id)` is the vocabulary's own string.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from mlmlab.errors import DataError
from mlmlab.tokenizer import N_SPECIAL, SPECIAL_TOKENS, UNK, min_vocab_size

KINDS = ("wordpiece", "bpe", "bytelevel")
CONTINUATION = "##"  # WordPiece's prefix for a piece that continues a word
METASPACE = "▁"


def _untrained(kind: str) -> Tokenizer:
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, continuing_subword_prefix=CONTINUATION))
        # Cased, accents kept: the explorer predicts the text as written.
        tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.normalizer = normalizers.NFC()
        # SentencePiece-style: a space becomes `▁` and starts the next piece; newlines are pieces of
        # their own. Nothing is prepended, so a text encodes the same cut into lines or whole.
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\n+"), "isolated"),
                                                     pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="never")])
        tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="never")
    elif kind == "bytelevel":
        tok = Tokenizer(models.BPE())
        # No prefix space: a line's first word encodes the same whether the line is read alone
        # (the cache encodes line by line) or inside the whole text.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    else:
        raise DataError(f"data.tokenizer = {kind!r}: must be one of char, {', '.join(KINDS)}")
    return tok


def _trainer(kind: str, vocab_size: int):
    specials = list(SPECIAL_TOKENS)
    if kind == "wordpiece":
        return trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                         continuing_subword_prefix=CONTINUATION)
    alphabet = pre_tokenizers.ByteLevel.alphabet() if kind == "bytelevel" else []
    return trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False, initial_alphabet=alphabet)


def train_subword(kind: str, texts: Iterable[str], vocab_size: int) -> "SubwordTokenizer":
    """A vocabulary of `vocab_size` pieces learned from `texts` (the training split, streamed).

    bpe and bytelevel learn the same vocabulary from the same text in every process; WordPiece's
    trainer breaks ties in hash-map order (huggingface/tokenizers#1794), so two processes may learn
    vocabularies that differ in a few pieces. Nothing depends on retraining: the vocabulary is
    remembered in the cache folder and saved with the run and its checkpoints."""
    least, what = min_vocab_size(kind)
    if vocab_size < least:
        raise DataError(f"data.vocab_size = {vocab_size}: too small for {kind}: at least {least} ({what})")
    tok = _untrained(kind)
    seen = _Counting(texts)
    tok.train_from_iterator(seen, _trainer(kind, vocab_size))
    if not seen.any_text:
        raise DataError("the training split holds no text to learn a vocabulary from")
    got = tok.get_vocab_size()
    if got <= N_SPECIAL:  # the normaliser dropped every character (wordpiece: control and U+FFFD)
        raise DataError(f"the training split is empty after {kind} tokenisation (only whitespace, control or "
                        "replacement characters): there is nothing to learn a vocabulary from")
    if got > vocab_size:  # the alphabet alone did not fit
        raise DataError(f"data.vocab_size = {vocab_size}: smaller than this corpus's alphabet; "
                        f"{kind} needs at least {got} here (the special tokens and every character)")
    if got < vocab_size:
        raise DataError(f"data.vocab_size = {vocab_size}: larger than this corpus can give; "
                        f"{kind} learned {got} pieces from its training split (choose at most {got})")
    return SubwordTokenizer(kind, tok)


class _Counting:
    """An iterator over texts that remembers whether any held more than whitespace."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.any_text = texts, False

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.any_text = self.any_text or bool(text.strip())
            yield text


class SubwordTokenizer:
    def __init__(self, kind: str, tok: Tokenizer):
        self.kind, self.tok = kind, tok
        specials = [tok.id_to_token(i) for i in range(N_SPECIAL)]
        if specials != list(SPECIAL_TOKENS):
            raise DataError(f"{kind} tokenizer: its first ids must be {', '.join(SPECIAL_TOKENS)}, not {', '.join(map(str, specials))}")
        self.raw = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
        if any(t is None for t in self.raw):
            raise DataError(f"{kind} tokenizer: its ids are not contiguous")
        try:  # a file that parses can still fail on the first unseen character (its [UNK] missing)
            tok.encode("a \u2603 1", add_special_tokens=False)
        except Exception as exc:  # the library raises a bare Exception
            raise DataError(f"{kind} tokenizer: does not encode text ({str(exc).splitlines()[0][:160]})") from None
        self.pieces = [self._readable(i, t) for i, t in enumerate(self.raw)]
        self._lookup: dict[str, int] | None = None

    # --- the CharTokenizer interface -----------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.raw)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each piece's (start, end) character offsets in `text`."""
        enc = self.tok.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_lines(self, lines: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Ids of consecutive lines and each piece's start, in characters from the first line's
        start: the token cache's batch encoder (the library spreads the batch over the cores).
        Lines cut by `split_lines` encode exactly as their joined text does."""
        encodings = self.tok.encode_batch(lines, add_special_tokens=False)
        ids = [np.asarray(e.ids, np.uint32) for e in encodings]
        base = np.cumsum([0] + [len(line) for line in lines[:-1]])
        starts = [np.asarray([s for s, _ in e.offsets], np.int64) + b for e, b in zip(encodings, base)]
        if not ids:
            return np.zeros(0, np.uint32), np.zeros(0, np.int64)
        return np.concatenate(ids), np.concatenate(starts)

    def decode(self, ids: Iterable[int], specials: bool = True) -> str:
        """The text of `ids`. WordPiece drops whitespace, so its words (a special token is one of
        its own: "the [MASK] sat") are joined by single spaces; bpe and byte-level keep their spaces
        as pieces and decode exactly, byte-level joining the bytes of a character split over pieces."""
        ids = [i for i in ids if specials or i >= N_SPECIAL]
        for i in ids:
            self.token(i)  # an id outside the vocabulary is one DataError, as in token()
        if self.kind == "bytelevel":
            return "".join(self.pieces[run[0]] if run[0] < N_SPECIAL else _bytes_text("".join(self.raw[i] for i in run))
                           for run in _runs_of_specials(ids))
        spaced = self.kind == "wordpiece"
        text = "".join(" " + self.pieces[i] if spaced and i < N_SPECIAL else self.pieces[i] for i in ids)
        return text[1:] if spaced and text.startswith(" ") else text

    def token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.pieces):
            raise DataError(f"token id {token_id} is outside this vocabulary (0 to {len(self.pieces) - 1})")
        return self.pieces[token_id]

    def raw_token(self, token_id: int) -> str:
        return self.raw[token_id]

    def ids_of(self, tokens: Iterable[str]) -> list[int]:
        """Ids of the given tokens in the vocabulary, by the vocabulary's spelling or as `token` shows them."""
        if self._lookup is None:
            self._lookup = {p: i for i, p in enumerate(self.pieces)}
            self._lookup.update({t: i for i, t in enumerate(self.raw)})
        return [self._lookup[t] for t in tokens if t in self._lookup]

    def word_tables(self) -> tuple[list[bool], list[bool]]:
        """(is a gap, always starts a word) per id, for whole-word and span masking."""
        gaps = [i < N_SPECIAL or not p.strip() for i, p in enumerate(self.pieces)]
        starts = [i >= N_SPECIAL and self.starts_word(i) for i in range(len(self.pieces))]
        return gaps, starts

    def starts_word(self, token_id: int) -> bool:
        """Whether a piece begins a word: a non-`##` WordPiece piece, a leading space, or punctuation
        (WordPiece and byte-level split punctuation from letters; bpe splits only at spaces, so a
        bpe piece such as "s." stays with its word)."""
        raw, piece = self.raw[token_id], self.pieces[token_id]
        if self.kind == "wordpiece":
            return not raw.startswith(CONTINUATION)
        return piece[:1].isspace() or is_punctuation(piece)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tok.to_str()}

    @classmethod
    def from_dict(cls, data: dict) -> "SubwordTokenizer":
        kind = data.get("kind") if isinstance(data, dict) else None
        text = data.get("tokenizer_json") if isinstance(data, dict) else None
        if kind not in KINDS or not isinstance(text, str):
            raise DataError("saved vocabulary is not a subword tokenizer (needs 'kind' and 'tokenizer_json')")
        return cls.from_json(kind, text, where="the saved vocabulary's tokenizer_json")

    @classmethod
    def from_json(cls, kind: str, text: str, where: str = "tokenizer.json") -> "SubwordTokenizer":
        try:
            tok = Tokenizer.from_str(text)
        except Exception as exc:  # the library raises a bare Exception for every parse problem
            first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise DataError(f"{where}: does not parse as a tokenizers file ({first})") from None
        return cls(kind, tok)

    # --- display -------------------------------------------------------------------------------
    def _readable(self, token_id: int, raw: str) -> str:
        return raw if token_id < N_SPECIAL else readable_piece(raw, self.kind)


def readable_piece(raw: str, kind: str, continuation: str = CONTINUATION) -> str:
    """A vocabulary's piece as a reader expects it: WordPiece drops its continuation prefix and gives a
    word's first piece its space (punctuation none), byte-level decodes its byte alphabet, and a
    SentencePiece-style `▁` is a space. Shared with the explorer's view of Hugging Face tokenizers."""
    if kind == "wordpiece":
        if raw.startswith(continuation):
            return raw[len(continuation):]
        return raw if is_punctuation(raw) else " " + raw
    if kind == "bytelevel":
        return _bytes_text(raw)
    return raw.replace(METASPACE, " ")


# Before a newline that follows a non-space: no piece of any kind spans this point, and what the
# whitespace after it becomes depends only on the text after it.
LINE_BREAK = re.compile(r"(?<=\S)(?=\n)")


def split_lines(text: str) -> list[str]:
    """`text` cut at every such point."""
    return LINE_BREAK.split(text)


def safe_cut(text: str) -> int:
    """The length of the longest prefix of `text` that ends at such a point (0 when there is none)."""
    at = len(text)
    while (at := text.rfind("\n", 0, at)) > 0:
        if not text[at - 1].isspace():
            return at
    return 0


def is_punctuation(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and all(unicodedata.category(ch).startswith(("P", "S")) for ch in stripped)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character map, inverted: what `ByteLevel` spells each byte as."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTES = _byte_decoder()


def _runs_of_specials(ids: list[int]) -> Iterator[list[int]]:
    """`ids` in runs: each special token alone, the real tokens between them together."""
    run: list[int] = []
    for i in ids:
        if i < N_SPECIAL:
            if run:
                yield run
            yield [i]
            run = []
        else:
            run.append(i)
    if run:
        yield run


def _bytes_text(raw: str) -> str:
    """A byte-level piece as text; a piece holding part of a multi-byte character shows U+FFFD. A
    character outside the byte alphabet (an added token) stands for itself, as the library decodes it."""
    return b"".join(bytes([_BYTES[ch]]) if ch in _BYTES else ch.encode() for ch in raw).decode("utf-8", errors="replace")


def vocab_dump(tokenizer: SubwordTokenizer) -> str:
    """The `tokenizer.json` text (for writing beside checkpoints and for export)."""
    return json.dumps(json.loads(tokenizer.tok.to_str()), ensure_ascii=False, indent=2)
