"""Char-level tokenizer with special tokens; its vocabulary travels with every run and checkpoint.

Special tokens take the first ids so that "a real token" is simply `id >= N_SPECIAL`, which makes
masking's random replacement and its special-token checks one comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from mlmlab.errors import DataError

PAD, MASK, UNK = "[PAD]", "[MASK]", "[UNK]"
SPECIAL_TOKENS = (PAD, MASK, UNK)
PAD_ID, MASK_ID, UNK_ID = 0, 1, 2
N_SPECIAL = len(SPECIAL_TOKENS)


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        self.itos = list(SPECIAL_TOKENS) + self.chars
        self.stoi = {ch: i for i, ch in enumerate(self.itos) if i >= N_SPECIAL}
        self._lut = None  # code point -> id table, built on first `encode_array`
        if len(self.stoi) != len(self.chars) or any(len(ch) != 1 for ch in self.chars):
            raise DataError("char vocabulary must hold distinct single characters")

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary of every character in `text`, most frequent first (ties by code point)."""
        return cls.from_counts(Counter(text))

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> "CharTokenizer":
        """Vocabulary of the counted characters, most frequent first (ties by code point): what a
        streaming pass over a corpus too large for a string builds its vocabulary from."""
        return cls(sorted(counts, key=lambda ch: (-counts[ch], ch)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, UNK_ID) for ch in text]

    def encode_array(self, code_points):
        """Ids of an array of code points (numpy uint32), through one lookup table: the token cache's
        streaming encoder. Characters outside the vocabulary are [UNK], as in `encode`."""
        import numpy as np

        if self._lut is None:
            top = max((ord(ch) for ch in self.chars), default=0)
            self._lut = np.full(top + 2, UNK_ID, dtype=np.uint32)
            self._lut[[ord(ch) for ch in self.chars]] = np.arange(N_SPECIAL, N_SPECIAL + len(self.chars), dtype=np.uint32)
        return self._lut[np.minimum(code_points, len(self._lut) - 1)]

    def decode(self, ids: Iterable[int], specials: bool = True) -> str:
        return "".join(self.token(i) for i in ids if specials or i >= N_SPECIAL)

    def token(self, token_id: int) -> str:
        if not 0 <= token_id < len(self.itos):  # a negative id would silently wrap around
            raise DataError(f"token id {token_id} is outside this vocabulary (0 to {len(self.itos) - 1})")
        return self.itos[token_id]

    def ids_of(self, tokens: Iterable[str]) -> list[int]:
        """Ids of the given tokens that are in the vocabulary (special tokens by name)."""
        lookup = {tok: i for i, tok in enumerate(self.itos)}
        return [lookup[t] for t in tokens if t in lookup]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharTokenizer":
        if not isinstance(data, dict) or data.get("kind") != cls.kind or not isinstance(data.get("chars"), str):
            raise DataError("saved vocabulary is not a char vocabulary")
        return cls(data["chars"])


TOKENIZER_KINDS = ("char", "wordpiece", "bpe", "bytelevel")
DEFAULT_VOCAB_SIZE = 8000  # a subword vocabulary's size when data.vocab_size is 0


def min_vocab_size(kind: str) -> tuple[int, str]:
    """The smallest vocabulary a subword kind can have, and what it must hold."""
    if kind == "bytelevel":
        return N_SPECIAL + 256, f"the {N_SPECIAL} special tokens and the 256 bytes"
    return N_SPECIAL + 1, f"the {N_SPECIAL} special tokens and one piece"


def build_tokenizer(kind: str, counts: Mapping[str, int]) -> CharTokenizer:
    """A new char run's tokenizer from its training split's character counts (subword kinds are
    trained from the split's text instead: `subword.train_subword`)."""
    if kind != "char":
        raise DataError(f"data.tokenizer = {kind!r}: build_tokenizer makes char vocabularies only")
    return CharTokenizer.from_counts(counts)


def tokenizer_from_dict(data: dict):
    """The tokenizer a run row or checkpoint saved: a char vocabulary, or a subword one with its
    `tokenizer.json` text (the `tokenizers` library is imported only then)."""
    if isinstance(data, dict) and data.get("kind") not in (None, "char"):
        from mlmlab.subword import SubwordTokenizer

        return SubwordTokenizer.from_dict(data)
    return CharTokenizer.from_dict(data)
