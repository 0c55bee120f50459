"""Presets: TOML files found by name in ./experiments and the repository's experiments/, and
`load_config`, which resolves a preset plus `--set` overrides into a checked config.

`preset_files` is the one lookup: the CLI resolves a bare name with it, the form lists its choices with it.
"""

from __future__ import annotations

from pathlib import Path

from mlmlab.config.overrides import apply_overrides, parse_overrides
from mlmlab.config.schema import ExperimentConfig, build_config
from mlmlab.config.toml import read_toml
from mlmlab.errors import ConfigError, quoted
from mlmlab.paths import path_kind

REPO_EXPERIMENTS = Path(__file__).resolve().parent.parent.parent / "experiments"
DEFAULT_PRESET = "quick"


def preset_files(extra_folder: Path | None = None) -> dict[str, Path]:
    """Preset name -> file; a name found in several folders comes from the first of: `extra_folder`
    (the app's presets folder), ./experiments, the repository's experiments/."""
    found: dict[str, Path] = {}
    for folder in (extra_folder, Path("experiments"), REPO_EXPERIMENTS):
        if folder and folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                if path.is_file():
                    found.setdefault(path.stem, path)
    return found


def list_presets() -> list[str]:
    return sorted(preset_files())


def default_presets_folder(app_folder: Path | None) -> Path:
    """Where a new preset is saved: the app's folder, else ./experiments, else the repository's."""
    if app_folder:
        return app_folder
    return Path("experiments") if Path("experiments").is_dir() else REPO_EXPERIMENTS


def find_preset(name_or_path: str | None) -> Path | None:
    """A preset file from a path or a bare name in ./experiments or the repository's experiments/."""
    if name_or_path is None:
        return preset_files().get(DEFAULT_PRESET)
    path = Path(name_or_path)
    if path_kind(path) == "file":
        return path
    if path.suffix == "" and "/" not in name_or_path:
        found = preset_files().get(name_or_path)
        if found is not None:
            return found
    if path_kind(path) == "dir":
        raise ConfigError(f"config {quoted(name_or_path)} is a folder, not a TOML file", value=name_or_path)
    raise ConfigError(f"config {quoted(name_or_path)} not found (give a .toml path or a preset name: "
                      f"{', '.join(list_presets()) or 'none found'})", value=name_or_path)


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Resolve a preset (or the default) plus `key=value` overrides into a validated config."""
    preset = find_preset(name_or_path)
    raw = read_toml(preset) if preset else {}
    return build_config(apply_overrides(raw, parse_overrides(overrides or [])))
