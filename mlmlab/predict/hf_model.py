"""Any local Hugging Face masked LM (a directory `save_pretrained` wrote) as a `Predictor`.

The notation maps onto the model's own tokenizer through `alignment`, as for mlmlab's subword runs:
`HFTokenizer` answers the same questions (pieces with offsets, readable pieces, which ids are
special and which is the mask), and `HFPredictor` frames each window with the special tokens the
model expects ([CLS] … [SEP], <s> … </s>, or none for an mlmlab export), which are never a position
nor a candidate. The answers are the usual `results` types.

No network, ever: every load is `local_files_only=True`, with HF_HUB_OFFLINE set before
`transformers` is imported. `trust_remote_code` is passed only for an mlmlab export whose modelling
file is, byte for byte, the one this mlmlab writes: mlmlab runs no other directory's code.
`transformers` is imported inside functions only (it is the optional `hf` extra).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mlmlab.config.schema import MaskConfig
from mlmlab.errors import CheckpointError, MlmlabError
from mlmlab.predict.alignment import Specials
from mlmlab.predict.hf_dir import check_model_dir, read_config, require_transformers
from mlmlab.predict.predictor import Predictor
from mlmlab.subword import readable_piece
from mlmlab.tokenizer import MASK

# How BERT was trained (and transformers' DataCollatorForLanguageModeling masks): what the explorer's
# "mask as training does" draws for a model whose own training masking is not recorded.
BERT_MASKING = MaskConfig(masking_prob=0.15, randomize_prob=0.1, no_change_prob=0.1)
DEFAULT_LIMIT = 512  # positions, when neither the config nor the tokenizer says


class HFTokenizer:
    """A transformers fast tokenizer, asked what `alignment` and the predictor ask mlmlab's tokenizers."""

    def __init__(self, tok: Any, model_vocab: int):
        self.tok = tok
        self.backend = tok.backend_tokenizer
        self.vocab_size = len(tok)
        self.raw = [t if t is not None else "" for t in tok.convert_ids_to_tokens(list(range(self.vocab_size)))]
        model_name = type(self.backend.model).__name__
        self.byte_level = "ByteLevel" in repr(self.backend.pre_tokenizer) or "ByteLevel" in repr(self.backend.decoder)
        self.continuation = getattr(self.backend.model, "continuing_subword_prefix", None) or "##"
        specials = set(tok.all_special_ids) | {i for i, t in enumerate(self.raw) if not t}
        self.specials = Specials(tok.mask_token_id, tok.unk_token_id, tok.mask_token, tok.unk_token or "[UNK]", frozenset(specials))
        self.kind = self._kind(model_name)
        if self.kind == "char":  # alignment's char path reads the vocabulary directly
            self.stoi = {t: i for i, t in enumerate(self.raw) if i not in specials}
        # Ids the model scores but the tokenizer cannot spell (a vocabulary padded to a round size).
        self.never_offered = tuple(sorted(specials | set(range(self.vocab_size, model_vocab))))
        self.prefix, self.suffix = self._framing()
        self._pieces: dict[int, str] = {}
        self._lookup: dict[str, int] | None = None

    def _kind(self, model_name: str) -> str:
        if model_name == "WordPiece":
            return "wordpiece"
        if model_name == "WordLevel" and all(len(t) == 1 for i, t in enumerate(self.raw) if i not in self.specials.ids):
            return "char"  # an mlmlab char export: one token per character
        if model_name == "BPE":
            return "bytelevel" if self.byte_level else "bpe"
        return model_name.lower()  # unigram (SentencePiece), wordlevel

    def _framing(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The ids the model expects before and after a text ([CLS] and [SEP], <s> and </s>, or none)."""
        plain = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        for at in range(len(full) - len(plain) + 1):
            if full[at : at + len(plain)] == plain:
                return tuple(full[:at]), tuple(full[at + len(plain) :])
        return (), ()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.backend.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def token(self, token_id: int) -> str:
        """The readable piece: WordPiece's `##` dropped (a word's first piece gets a leading space, as
        mlmlab's own), byte-level `Ġ` and SentencePiece `▁` as a space; special tokens as spelled."""
        if not 0 <= token_id < self.vocab_size:
            raise MlmlabError(f"token id {token_id} is outside this vocabulary (0 to {self.vocab_size - 1})")
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = self._readable(token_id)
        return piece

    def _readable(self, token_id: int) -> str:
        raw = self.raw[token_id]
        if token_id == self.specials.mask_id:
            return MASK  # the notation's word for it, whatever the tokenizer spells (<mask>)
        if self.specials.special(token_id) or self.kind in ("char", "wordlevel"):
            return raw
        scheme = "bytelevel" if self.byte_level and self.kind != "wordpiece" else self.kind
        return readable_piece(raw, scheme, self.continuation)

    def raw_token(self, token_id: int) -> str:
        return self.raw[token_id]

    def ids_of(self, tokens) -> list[int]:
        """Ids of the given tokens, by the vocabulary's spelling or as `token` shows them."""
        if self._lookup is None:
            self._lookup = {self.token(i): i for i in range(self.vocab_size)}
            self._lookup.update({t: i for i, t in enumerate(self.raw) if t})
        return [self._lookup[t] for t in tokens if t in self._lookup]


@dataclass
class HFPredictor(Predictor):
    """A transformers masked LM, predicting through the same code as a run's checkpoint."""

    ref: Any = None  # results.ModelDirRef
    limit: int = DEFAULT_LIMIT  # positions the model reads, its special tokens included

    @property
    def max_seq_len(self) -> int:
        return max(1, self.limit - len(self.tokenizer.prefix) - len(self.tokenizer.suffix))

    @property
    def n_layers(self) -> int:
        return int(getattr(self.model.config, "num_hidden_layers", 0) or 0)

    @property
    def n_heads(self) -> int:
        return int(getattr(self.model.config, "num_attention_heads", 0) or 0)

    @property
    def never_offered(self) -> tuple[int, ...]:
        return self.tokenizer.never_offered

    def mask_config(self) -> MaskConfig:
        return BERT_MASKING

    def _framed(self, window_ids: list[int]) -> torch.Tensor:
        ids = [*self.tokenizer.prefix, *window_ids, *self.tokenizer.suffix]
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def _probabilities(self, window_ids: list[int], at: list[int]) -> torch.Tensor:
        ids = self._framed(window_ids)
        logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        rows = torch.tensor(at, dtype=torch.long, device=self.device) + len(self.tokenizer.prefix)
        return logits[rows].float().softmax(-1).cpu()

    @torch.inference_mode()
    def _attention_maps(self, window_ids: list[int]) -> torch.Tensor:
        """The window's rows and columns of every layer's attention; the special tokens' columns are
        left out, so a row sums to what the sentence's tokens got (BERT's heads give [SEP] much)."""
        ids = self._framed(window_ids)
        out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
        attentions = getattr(out, "attentions", None)
        if not attentions or any(a is None for a in attentions):
            raise MlmlabError(f"{self.ref.label} returns no attention weights, so there is no attention view for it")
        first = len(self.tokenizer.prefix)
        maps = torch.stack([a[0] for a in attentions])  # (layers, heads, T, T) with the special tokens
        return maps[:, :, first : first + len(window_ids), first : first + len(window_ids)].float().cpu()


def load_hf_predictor(path: str | Path, device: str = "cpu") -> HFPredictor:
    """The model directory at `path` as a predictor; one line (CheckpointError) for every way it is not
    a local masked LM with a fast tokenizer and a mask token."""
    ref = check_model_dir(path)
    require_transformers()
    start = time.perf_counter()
    tf = offline_transformers()
    trust = trusted_export(ref.path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the app's screen must not get library warnings on stderr
        require_masked_lm(tf, ref, trust)
        tok = load_tokenizer(tf, ref, trust)
        model = load_model(tf, ref, trust)
    vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None else len(tok)
    tokenizer = HFTokenizer(tok, vocab)
    dev = torch.device(device)
    predictor = HFPredictor(model.float().to(dev).eval(), tokenizer, model.config.to_dict(), None, ref.path, device=dev,
                            ref=ref, limit=position_limit(model, tok))
    predictor.load_seconds = time.perf_counter() - start
    return predictor


def offline_transformers():
    """`transformers`, imported with the hub offline and its progress bars and warnings quiet."""
    os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported: set before
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def trusted_export(path: Path) -> bool:
    """Whether the directory is an mlmlab export whose code is this mlmlab's own (then, and only then,
    its remote code runs)."""
    from mlmlab.export.writer import MODELING_FILE, modeling_code

    config = read_config(path)
    names = [str(v) for v in (config.get("auto_map") or {}).values()]
    if config.get("model_type") != "mlmlab" or not names:
        return False
    if not all(name.startswith(MODELING_FILE.removesuffix(".py") + ".") for name in names):
        return False
    code = path / MODELING_FILE
    if not code.is_file() or code.read_text(encoding="utf-8") != modeling_code():
        raise CheckpointError(f"{path}: its {MODELING_FILE} is not the one this mlmlab writes, and mlmlab runs no code "
                              "it did not write: export the run again (mlmlab export RUN DIR)")
    return True


def require_masked_lm(tf, ref, trust: bool) -> None:
    """A config transformers has a masked-LM head for (checked before the weights are read)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = read_config(ref.path)
    if trust:
        return
    if config.get("auto_map"):
        raise CheckpointError(f"{ref.path} needs its own Python code (trust_remote_code), and mlmlab runs only the code "
                              "of its own exports: load it with transformers yourself")
    if config["model_type"] not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        what = ref.architecture or config["model_type"]
        raise CheckpointError(f"{ref.path} holds a {what}, not a masked LM: transformers has no masked-LM head "
                              f"for model type {config['model_type']!r}")


def load_tokenizer(tf, ref, trust: bool):
    try:
        tok = tf.AutoTokenizer.from_pretrained(ref.path, local_files_only=True, trust_remote_code=trust)
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds for a directory it cannot read
        raise CheckpointError(f"{ref.path}: its tokenizer does not load ({_first_line(exc)})") from None
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        raise CheckpointError(f"{ref.path}: mlmlab needs a fast tokenizer (tokenizer.json), and this one is "
                              f"{type(tok).__name__}: save a PreTrainedTokenizerFast beside the model")
    if tok.mask_token is None or tok.mask_token_id is None:
        raise CheckpointError(f"{ref.path}: its tokenizer has no mask token, so there is no blank to fill "
                              "(a masked LM's tokenizer names one, e.g. [MASK] or <mask>)")
    return tok


def load_model(tf, ref, trust: bool):
    """The masked LM with eager attention (the implementation that can return attention weights)."""
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": trust, "output_loading_info": True}
    try:
        try:
            model, info = tf.AutoModelForMaskedLM.from_pretrained(ref.path, attn_implementation="eager", **kwargs)
        except ValueError as exc:
            if "attn" not in str(exc) and "eager" not in str(exc):
                raise
            model, info = tf.AutoModelForMaskedLM.from_pretrained(ref.path, **kwargs)  # no eager: no attention view
    except Exception as exc:  # noqa: BLE001 - as for the tokenizer
        raise CheckpointError(f"{ref.path}: its model does not load as a masked LM ({_first_line(exc)})") from None
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.endswith("position_ids"))
    if missing:
        shown = ", ".join(missing[:3]) + (", …" if len(missing) > 3 else "")
        raise CheckpointError(f"{ref.path} holds a {ref.architecture or 'model'} without a masked-LM head (missing {shown}): "
                              "its predictions would be random; save the ...ForMaskedLM model")
    return model


def position_limit(model, tok) -> int:
    """How many positions the model reads, its special tokens included: the smaller of the config's
    position table and the tokenizer's model_max_length. RoBERTa-style embeddings number positions
    from padding_idx + 1, so they lose that many."""
    limits = []
    n_positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(n_positions, int) and n_positions > 0:
        embeddings = getattr(model.base_model, "embeddings", None)
        pad = getattr(embeddings, "padding_idx", None)
        offset = pad + 1 if isinstance(pad, int) and hasattr(embeddings, "position_embeddings") else 0
        limits.append(n_positions - offset)
    most = getattr(tok, "model_max_length", None)
    if isinstance(most, int) and 0 < most < 1_000_000:  # transformers writes ~1e30 for "not set"
        limits.append(most)
    return min(limits, default=DEFAULT_LIMIT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]
