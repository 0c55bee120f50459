"""Experiment configuration: typed sections, TOML presets, dotted overrides, one-line errors.

A config is four sections (`[data]`, `[model]`, `[mask]`, `[train]`). The defaults are the `quick`
preset, so `mlmlab run` with no file works anywhere. Every problem is reported as one line that
names the key, the value and what is allowed (a `ConfigError`).
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlmlab.errors import ConfigError

REPO_EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
DEFAULT_PRESET = "quick"
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
    tokenizer: Literal["char"] = Field("char", description="tokenizer kind; 'char' gives one token per character")
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


class TrainConfig(_Section):
    batch_size: int = Field(64, ge=1, le=65536, description="sequences per step")
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
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="steps between train metric rows")
    eval_every: int = Field(100, ge=1, le=MAX_STEPS, description="steps between held-out evaluations and samples")
    eval_batches: int = Field(8, ge=1, le=1000, description="held-out batches per evaluation (fixed windows, fixed masks)")
    checkpoint_every: int = Field(500, ge=1, le=MAX_STEPS, description="steps between checkpoints")
    keep_checkpoints: int = Field(5, ge=0, le=1_000_000, description="checkpoints kept on disk (0 = all)")
    skip_nonfinite: bool = Field(False, description="skip steps whose loss is NaN/inf instead of failing the run")


class ExperimentConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict[str, Any]) -> "ExperimentConfig":
        return build_config(_merge(self.to_dict(), _nest(overrides)))


# Keys whose change would not fit the checkpoint's weights.
SHAPE_KEYS = ("model.d_model", "model.n_layers", "model.n_heads", "model.d_ff", "model.max_seq_len", "data.tokenizer")
# Keys --resume may change.
RESUMABLE_KEYS = ("train.steps", "train.max_minutes")


def all_keys() -> list[str]:
    sections = ExperimentConfig.model_fields
    return [f"{s}.{k}" for s in SECTIONS for k in sections[s].annotation.model_fields]


def describe(key: str) -> str:
    section, name = key.split(".", 1)
    return ExperimentConfig.model_fields[section].annotation.model_fields[name].description or ""


def find_preset(name_or_path: str | None) -> Path | None:
    """A preset file from a path or a bare name in ./experiments or the repository's experiments/."""
    if name_or_path is None:
        candidates = [Path("experiments") / f"{DEFAULT_PRESET}.toml", REPO_EXPERIMENTS / f"{DEFAULT_PRESET}.toml"]
        return next((p for p in candidates if path_kind(p) == "file"), None)
    path = Path(name_or_path)
    if path_kind(path) == "file":
        return path
    if path.suffix == "" and "/" not in name_or_path:
        for folder in (Path("experiments"), REPO_EXPERIMENTS):
            if path_kind(folder / f"{name_or_path}.toml") == "file":
                return folder / f"{name_or_path}.toml"
    if path_kind(path) == "dir":
        raise ConfigError(f"config {show(name_or_path)} is a folder, not a TOML file")
    raise ConfigError(f"config {show(name_or_path)} not found (give a .toml path or a preset name: {', '.join(list_presets()) or 'none found'})")


def path_kind(path: str | Path) -> str | None:
    """'file', 'dir' or None for a path a user typed; never raises (NUL bytes, over-long names, ~nobody)."""
    try:
        path = Path(path).expanduser()
        return "file" if path.is_file() else "dir" if path.is_dir() else None
    except (OSError, ValueError, RuntimeError):
        return None


def show(value: Any, limit: int = 80) -> str:
    """A value as it goes into an error line: quoted, control characters escaped, kept short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def list_presets() -> list[str]:
    folders = [Path("experiments"), REPO_EXPERIMENTS]
    names = {p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.toml")}
    return sorted(names)


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Resolve a preset (or the default) plus `key=value` overrides into a validated config."""
    preset = find_preset(name_or_path)
    raw = read_toml(preset) if preset else {}
    return build_config(_merge(raw, _nest(parse_overrides(overrides or []))))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {show(str(path))}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config {show(str(path))}: cannot read ({exc.strerror})") from None
    return parse_toml(text, source=str(path))


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML ({exc})") from None


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a flat dict; values are TOML literals, else plain strings."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {show(item)}: expected key=value, e.g. train.steps=2000")
        parsed[key] = parse_value(text.strip())
    return parsed


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def build_config(raw: dict[str, Any]) -> ExperimentConfig:
    _check_keys(raw)
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    _cross_check(config)
    return config


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if not dot or "." in name or not name:
            _unknown(key)
        nested.setdefault(section, {})[name] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        if isinstance(merged.get(section), dict) and isinstance(values, dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def _check_keys(raw: dict[str, Any]) -> None:
    known = set(all_keys())
    for section, values in raw.items():
        if section not in SECTIONS:
            _unknown(f"{section}.{next(iter(values))}" if isinstance(values, dict) and values else section)
        if not isinstance(values, dict):
            raise ConfigError(f"[{section}] must be a table of keys, got {show(values)}")
        for name in values:
            if f"{section}.{name}" not in known:
                _unknown(f"{section}.{name}")


def _unknown(key: str) -> None:
    tail = key.rsplit(".", 1)[-1]
    close = [k for k in all_keys() if k.endswith("." + tail)][:1]  # right name, wrong section
    if not close:
        close = difflib.get_close_matches(key, all_keys() + list(SECTIONS), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(f"unknown config key {show(key)}{hint}")


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    value = error.get("input")
    message = " ".join(error["msg"].removeprefix("Value error, ").split())
    if error["type"] == "literal_error":
        message = message.replace("Input should be", "must be one of:")
    return f"{key} = {show(value)}: {message}"


def _cross_check(cfg: ExperimentConfig) -> None:
    m, t, k = cfg.model, cfg.train, cfg.mask
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.n_heads = {m.n_heads}: must divide model.d_model = {m.d_model}")
    if (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.n_heads = {m.n_heads}: head size d_model/n_heads = {m.d_model // m.n_heads} must be even")
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len = {t.seq_len}: must be at most model.max_seq_len = {m.max_seq_len}")
    if k.randomize_prob + k.no_change_prob > 1:
        raise ConfigError(
            f"mask.randomize_prob + mask.no_change_prob = {k.randomize_prob + k.no_change_prob:g}: must be at most 1"
        )
    # A short length at or above seq_len leaves nothing to warm up: the run trains at seq_len throughout,
    # so overriding seq_len on a preset with a warm-up never needs a second override.
    if t.short_seq_len and t.short_seq_len < 4:
        raise ConfigError(f"train.short_seq_len = {t.short_seq_len}: must be at least 4 (0 = off)")
    if t.short_seq_steps and not t.short_seq_len:
        raise ConfigError(f"train.short_seq_steps = {t.short_seq_steps}: needs train.short_seq_len > 0")
    for token in k.no_mask_tokens:
        if not token:
            raise ConfigError("mask.no_mask_tokens: entries must be non-empty strings")
    source = cfg.data.source
    if source != "builtin" and path_kind(source) is None:
        raise ConfigError(f"data.source = {show(source)}: no such file or folder (or use 'builtin')")


def shape_changes(old: dict[str, Any], new: ExperimentConfig) -> list[str]:
    """Keys in SHAPE_KEYS whose value differs between a stored config and a new one."""
    fresh = new.to_dict()
    return [key for key in SHAPE_KEYS if _get(old, key) != _get(fresh, key)]


def _get(tree: dict[str, Any], key: str) -> Any:
    section, name = key.split(".", 1)
    return tree.get(section, {}).get(name)


def flatten(tree: dict[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in tree.items() if isinstance(values, dict) for k, v in values.items()}


def to_toml(cfg: ExperimentConfig) -> str:
    """A preset file for this config (TOML writer kept tiny: our values are scalars and string lists)."""
    lines: list[str] = []
    for section, values in cfg.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{name} = {_toml_value(value)}" for name, value in values.items()]
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
