"""Experiment configuration: typed sections, TOML presets, dotted overrides, one-line errors.

A config is four sections (`[data]`, `[model]`, `[mask]`, `[train]`). The defaults are the `quick`
preset, so `mlmlab run` with no file works anywhere. Every problem is reported as one line that
names the key, the value and what is allowed (a `ConfigError` carrying `key` and `value`).

schema: the sections and their checks; overrides: `--set key=value`; presets: finding preset files
and `load_config`; toml: reading and writing config files.
"""

from mlmlab.config.overrides import apply_overrides, parse_overrides, parse_value
from mlmlab.config.presets import (DEFAULT_PRESET, REPO_EXPERIMENTS, default_presets_folder, find_preset, list_presets,
                                   load_config, preset_files)
from mlmlab.config.schema import (MAX_INT, MAX_STEPS, RESUMABLE_KEYS, SECTIONS, SHAPE_KEYS, DataConfig,
                                  ExperimentConfig, MaskConfig, ModelConfig, TrainConfig, all_keys, build_config,
                                  describe, flatten)
from mlmlab.config.toml import parse_toml, read_toml, to_toml

__all__ = [
    "DEFAULT_PRESET", "MAX_INT", "MAX_STEPS", "REPO_EXPERIMENTS", "RESUMABLE_KEYS", "SECTIONS", "SHAPE_KEYS",
    "DataConfig", "ExperimentConfig", "MaskConfig", "ModelConfig", "TrainConfig",
    "all_keys", "apply_overrides", "build_config", "default_presets_folder", "describe", "find_preset", "flatten",
    "list_presets", "load_config", "parse_overrides", "parse_toml", "parse_value", "preset_files", "read_toml",
    "to_toml",
]
