"""A run's tokenizer as the three files `transformers.AutoTokenizer` reads: tokenizer.json,
tokenizer_config.json and special_tokens_map.json (a `PreTrainedTokenizerFast`).

A subword run already holds its `tokenizers` file. A char run gets one built here from its
character list: a WordLevel model whose ids are the CharTokenizer's ids, a pre-tokenizer that
cuts the text into single characters (spaces and newlines included) and a decoder that joins them
back with nothing in between. Neither kind adds [CLS] or [SEP]: the model never saw them.
"""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from mlmlab.subword import SubwordTokenizer
from mlmlab.tokenizer import MASK, PAD, SPECIAL_TOKENS, UNK, CharTokenizer

# Any one character, newlines included (`.` would skip "\n").
ONE_CHARACTER = Regex(r"[\s\S]")


def char_tokenizer_json(tokenizer: CharTokenizer) -> Tokenizer:
    """The `tokenizers` equivalent of a CharTokenizer: the same ids for every text."""
    vocab = {token: i for i, token in enumerate(tokenizer.itos)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(ONE_CHARACTER, behavior="isolated")
    tok.decoder = decoders.Fuse()
    # Special tokens are matched as a whole before the split, so "[MASK]" in a text is one token.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def hf_tokenizer(tokenizer: CharTokenizer | SubwordTokenizer) -> Tokenizer:
    if isinstance(tokenizer, CharTokenizer):
        return char_tokenizer_json(tokenizer)
    return tokenizer.tok


def tokenizer_files(tokenizer: CharTokenizer | SubwordTokenizer, max_seq_len: int) -> dict[str, str]:
    """File name -> text for the tokenizer's three files."""
    tok = hf_tokenizer(tokenizer)
    special = {"pad_token": PAD, "mask_token": MASK, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "model_max_length": max_seq_len,
        # The model takes no token types; a char run's text must not have its spaces "cleaned up".
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    return {
        "tokenizer.json": json.dumps(json.loads(tok.to_str()), ensure_ascii=False, indent=2) + "\n",
        "tokenizer_config.json": _dump(config),
        "special_tokens_map.json": _dump(special),
    }


def _dump(data: dict) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"
