"""Config files: TOML read with the standard library, written with tomli-w (valid for any string)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from mlmlab.config.schema import ExperimentConfig
from mlmlab.errors import ConfigError, quoted


def read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {quoted(str(path))}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"config {quoted(str(path))}: cannot read ({exc.strerror})") from None
    return parse_toml(text, source=str(path))


def parse_toml(text: str, source: str = "config") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML ({exc})") from None


def to_toml(cfg: ExperimentConfig) -> str:
    """A preset file for this config: one table per section."""
    return tomli_w.dumps(cfg.to_dict())
