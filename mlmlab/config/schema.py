"""The config's shape and its checks: four typed sections, the key catalogue, and `build_config`.

Every problem is a `ConfigError` of one line that names the key, the value and what is allowed,
with `key` and `value` as fields so the form marks the field without reading the line.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mlmlab.errors import ConfigError, quoted
from mlmlab.paths import path_kind
from mlmlab.tokenizer import TOKENIZER_KINDS, min_vocab_size
from mlmlab.vocab import MASK_STRATEGIES

SECTIONS = ("data", "model", "mask", "train")
MAX_STEPS = 10**12  # step counts are stored as SQLite INTEGERs and multiplied by tokens per step
MAX_INT = 2**62


class _Section(BaseModel):
    # strict: a TOML string "64" is not silently an int; forbid: unknown keys are caught earlier
    # with a suggestion, this is the backstop.
    # allow_inf_nan=False: inf and nan are never sensible settings, and the stored config stays
    # strict JSON.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class DataConfig(_Section):
    source: str = Field("builtin", description="'builtin' (Python's own docs), a UTF-8 text file, or a folder of .txt/.md files")
    tokenizer: Literal[TOKENIZER_KINDS] = Field(
        "char", description="char (one token per character), wordpiece (BERT), bpe (SentencePiece-style) or bytelevel (RoBERTa's byte-level BPE)")
    vocab_size: int = Field(0, ge=0, le=1 << 24, description="subword vocabulary size, learned from the training split (0 = 8000; char takes every character)")
    valid_fraction: float = Field(0.05, gt=0, lt=0.5, description="share of the text held out for evaluation")
    max_chars: int = Field(0, ge=0, le=MAX_INT, description="use only the first N characters of the corpus (0 = all)")


class ModelConfig(_Section):
    d_model: int = Field(128, ge=8, le=8192, description="embedding width")
    n_layers: int = Field(4, ge=1, le=96, description="number of Transformer blocks")
    n_heads: int = Field(4, ge=1, le=128, description="attention heads; must divide d_model")
    d_ff: int = Field(512, ge=8, le=65536, description="hidden width of the feed-forward layer")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout probability")
    max_seq_len: int = Field(128, ge=4, le=65536, description="longest sequence the position table holds")


class MaskConfig(_Section):
    masking_prob: float = Field(0.4, gt=0, le=1, description="share of maskable positions chosen for prediction")
    randomize_prob: float = Field(0.1, ge=0, le=1, description="share of chosen positions replaced by a random real token")
    no_change_prob: float = Field(0.1, ge=0, le=1, description="share of chosen positions left unchanged")
    no_mask_tokens: list[str] = Field(default_factory=list, description="tokens never chosen, e.g. [' ', '\\n']")
    strategy: Literal[MASK_STRATEGIES] = Field(
        "token", description="choose single tokens, whole words, or spans of whole words (evaluation always uses token)")
    span_p: float = Field(0.2, gt=0, lt=1, description="span strategy: geometric parameter of span lengths in words (SpanBERT: 0.2)")
    span_max_words: int = Field(10, ge=1, le=1000, description="span strategy: longest span in words; longer draws are redrawn (SpanBERT: 10)")


class TrainConfig(_Section):
    batch_size: int = Field(64, ge=1, le=65536, description="sequences per micro-batch (per process under torchrun)")
    grad_accum_steps: int = Field(1, ge=1, le=4096, description="micro-batches per optimizer step, gradients accumulated (global batch = batch_size x this x processes)")
    seq_len: int = Field(64, ge=4, le=65536, description="tokens per sequence; at most model.max_seq_len")
    steps: int = Field(3000, ge=1, le=MAX_STEPS, description="stop after this many optimizer steps")
    max_minutes: float = Field(2.0, ge=0, le=1e7, description="also stop after this much wall time (0 = no limit)")
    lr: float = Field(3e-3, gt=0, le=10, description="peak learning rate (a multiplier for the noam schedule)")
    optimizer: Literal["adamw", "adam"] = Field("adamw", description="optimizer")
    schedule: Literal["cosine", "noam", "constant"] = Field("cosine", description="learning-rate schedule after warm-up")
    warmup_steps: int = Field(200, ge=0, le=MAX_STEPS, description="linear warm-up steps")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a share of lr")
    weight_decay: float = Field(0.01, ge=0, le=1, description="AdamW weight decay (not applied to norms and biases)")
    grad_clip: float = Field(1.0, ge=0, le=1e6, description="clip the global gradient norm (0 = off)")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast where the device has fast bf16")
    compile: Literal["auto", "on", "off"] = Field("auto", description="torch.compile the model (auto: on CUDA only)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seed for init, batches and masks")
    short_seq_len: int = Field(32, ge=0, le=65536, description="train the first short_seq_steps at this length (0 = off; no effect when not below seq_len)")
    short_seq_steps: int = Field(400, ge=0, le=MAX_STEPS, description="steps spent at short_seq_len")
    seq_len_schedule: list[list[int]] = Field(default_factory=list, description="[[step, seq_len], ...]: train at each seq_len from its step on, e.g. [[0, 32], [2000, 128]] (empty: the short_seq_len warm-up; evaluation stays at seq_len)")
    schedule_keeps_tokens: bool = Field(False, description="scale the batch so each step trains about batch_size x the last stage's seq_len tokens (rounded down)")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="steps between train metric rows")
    eval_every: int = Field(100, ge=1, le=MAX_STEPS, description="steps between held-out evaluations and samples")
    eval_batches: int = Field(8, ge=1, le=1000, description="held-out batches per evaluation (fixed windows, fixed masks)")
    checkpoint_every: int = Field(500, ge=1, le=MAX_STEPS, description="steps between checkpoints")
    keep_checkpoints: int = Field(5, ge=0, le=1_000_000, description="checkpoints kept on disk (0 = all)")
    skip_nonfinite: bool = Field(False, description="skip steps whose loss is NaN/inf instead of failing the run")

    @field_validator("seq_len_schedule", mode="before")
    @classmethod
    def _stage_pairs(cls, value: Any) -> Any:
        pair = lambda p: isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p)  # noqa: E731
        if not isinstance(value, list) or not all(pair(p) for p in value):
            raise ValueError("must be a list of [step, seq_len] integer pairs, e.g. [[0, 32], [2000, 128]]")
        return value


class ExperimentConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict[str, Any]) -> "ExperimentConfig":
        # Imported here: applying overrides builds on this module (key names, build_config).
        from mlmlab.config.overrides import apply_overrides

        return build_config(apply_overrides(self.to_dict(), overrides))


# Keys whose change would not fit the checkpoint's weights.
SHAPE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.d_ff", "model.max_seq_len", "data.tokenizer",
              "data.vocab_size")
# Keys --resume may change.
RESUMABLE_KEYS = ("train.steps", "train.max_minutes", "train.grad_accum_steps")  # accum: keep the global batch on another world size


def all_keys() -> list[str]:
    sections = ExperimentConfig.model_fields
    return [f"{s}.{k}" for s in SECTIONS for k in sections[s].annotation.model_fields]


def describe(key: str) -> str:
    section, name = key.split(".", 1)
    return ExperimentConfig.model_fields[section].annotation.model_fields[name].description or ""


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in tree.items() if isinstance(values, dict) for k, v in values.items()}


def unknown_key(key: str) -> ConfigError:
    """The error for a key no section has, with the closest real key as a suggestion."""
    tail = key.rsplit(".", 1)[-1]
    close = [k for k in all_keys() if k.endswith("." + tail)][:1]  # right name, wrong section
    if not close:
        close = difflib.get_close_matches(key, all_keys() + list(SECTIONS), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key {quoted(key)}{hint}", key=key)


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    _check_keys(raw)
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise _first_problem(exc) from None
    _cross_check(config)
    return config


def _check_keys(raw: dict[str, Any]) -> None:
    known = set(all_keys())
    for section, values in raw.items():
        if section not in SECTIONS:
            raise unknown_key(f"{section}.{next(iter(values))}" if isinstance(values, dict) and values else section)
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {quoted(values)}", key=section, value=values)
        for name in values:
            if f"{section}.{name}" not in known:
                raise unknown_key(f"{section}.{name}")


def _first_problem(exc: ValidationError) -> ConfigError:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])  # a list entry adds its index: mask.no_mask_tokens.0
    value = error.get("input")
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    if error["type"] == "literal_error":
        message = message.replace("Input should be", "must be one of:")
    key = ".".join(str(part) for part in error["loc"][:2])
    return ConfigError(f"{where} = {quoted(value)}: {message}", key=key, value=value)


def _cross_check(cfg: ExperimentConfig) -> None:
    m, t, k = cfg.model, cfg.train, cfg.mask
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.n_heads = {m.n_heads}: must divide model.d_model = {m.d_model}",
                          key="model.n_heads", value=m.n_heads)
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.n_heads = {m.n_heads}: head size d_model/n_heads = {m.d_model // m.n_heads} must be even",
                          key="model.n_heads", value=m.n_heads)
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len = {t.seq_len}: must be at most model.max_seq_len = {m.max_seq_len}",
                          key="train.seq_len", value=t.seq_len)
    if k.randomize_prob + k.no_change_prob > 1:
        raise ConfigError(
            f"mask.randomize_prob + mask.no_change_prob = {k.randomize_prob + k.no_change_prob:g}: must be at most 1",
            key="mask.randomize_prob", value=k.randomize_prob,
        )
    # A short length at or above seq_len leaves nothing to warm up: the run trains at seq_len throughout,
    # so overriding seq_len on a preset with a warm-up never needs a second override.
    if t.short_seq_len and t.short_seq_len < 4:
        raise ConfigError(f"train.short_seq_len = {t.short_seq_len}: must be at least 4 (0 = off)",
                          key="train.short_seq_len", value=t.short_seq_len)
    if t.short_seq_steps and not t.short_seq_len:
        raise ConfigError(f"train.short_seq_steps = {t.short_seq_steps}: needs train.short_seq_len > 0",
                          key="train.short_seq_steps", value=t.short_seq_steps)
    _check_seq_len_schedule(t, m.max_seq_len)
    _check_vocab_size(cfg.data)
    for token in k.no_mask_tokens:
        if not token:
            raise ConfigError("mask.no_mask_tokens: entries must be non-empty strings", key="mask.no_mask_tokens", value=token)
    source = cfg.data.source
    if source != "builtin" and path_kind(source) is None:
        raise ConfigError(f"data.source = {quoted(source)}: no such file or folder (or use 'builtin')",
                          key="data.source", value=source)


MAX_SCHEDULE_STAGES = 8  # each new window shape recompiles under torch.compile, which keeps 8 per function


def _check_seq_len_schedule(t: TrainConfig, max_seq_len: int) -> None:
    """Stages start at step 0, steps strictly increase, every length fits the position table."""
    key, stages = "train.seq_len_schedule", t.seq_len_schedule
    problem = None
    if len(stages) > MAX_SCHEDULE_STAGES:
        problem = f"at most {MAX_SCHEDULE_STAGES} stages (each new shape recompiles under torch.compile)"
    elif stages and stages[0][0] != 0:
        problem = "the first stage must start at step 0"
    elif any(b[0] <= a[0] for a, b in zip(stages, stages[1:])):
        problem = "the steps must strictly increase"
    elif any(not 0 <= step <= MAX_STEPS for step, _ in stages):
        problem = f"steps must be between 0 and {MAX_STEPS}"
    elif any(not 4 <= length <= max_seq_len for _, length in stages):
        problem = f"each seq_len must be between 4 and model.max_seq_len = {max_seq_len}"
    if problem:
        raise ConfigError(f"{key} = {quoted(stages)}: {problem}", key=key, value=stages)


def _check_vocab_size(d: DataConfig) -> None:
    """char takes every character of the corpus; a subword vocabulary must hold its special tokens
    (and byte-level its 256 bytes). Whether the corpus can give that many is known after training."""
    key, size = "data.vocab_size", d.vocab_size
    if d.tokenizer == "char":
        if size:
            raise ConfigError(f"{key} = {size}: the char tokenizer takes every character of the corpus "
                              "(set 0, or choose data.tokenizer = wordpiece, bpe or bytelevel)", key=key, value=size)
        return
    least, what = min_vocab_size(d.tokenizer)
    if size and size < least:
        raise ConfigError(f"{key} = {size}: too small for {d.tokenizer}: at least {least} ({what})", key=key, value=size)
