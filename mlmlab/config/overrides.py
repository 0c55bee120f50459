"""`--set key=value` overrides: parsed as TOML literals and laid over a config tree.

The form builds the same `key=value` strings from its fields, so both check input with one parser.
"""

from __future__ import annotations

import tomllib
from typing import Any

from mlmlab.config.schema import unknown_key
from mlmlab.errors import ConfigError, quoted


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a flat dict; values are TOML literals, else plain strings."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {quoted(item)}: expected key=value, e.g. train.steps=2000", value=item)
        parsed[key] = parse_value(text.strip())
    return parsed


def parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config tree (sections of keys) with flat `section.name` overrides laid over it."""
    return _merge(tree, _nest(overrides))


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if not dot or "." in name or not name:
            raise unknown_key(key)
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
