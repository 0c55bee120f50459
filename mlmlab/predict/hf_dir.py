"""Whether a name on the command line, or a path typed in the explorer, is a local Hugging Face model
directory: the checks that need neither torch nor `transformers` (so a typo is one line at once).

A directory counts when it holds `config.json` (what `save_pretrained` writes). A name with a path
separator, or starting with `.` or `~`, is always meant as a directory; any other name is a run
unless a model directory of that name exists. Whether the model is a masked LM with a fast
tokenizer and a mask token is settled when `hf_model` loads it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from mlmlab.errors import CheckpointError, MlmlabError
from mlmlab.predict.results import ModelDirRef

HF_EXTRA = 'pip install "mlmlab[hf]"'
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.startswith((".", "~"))


def model_dir_of(ref: str | int) -> ModelDirRef | None:
    """The model directory `ref` names, None when it names a run; a CheckpointError when it is meant
    as a directory (a path) but is not a model directory."""
    text = str(ref).strip()
    path = Path(text).expanduser()
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return check_model_dir(path)
    if looks_like_path(text):
        return check_model_dir(path)  # raises: says what is missing
    return None


def check_model_dir(path: str | Path) -> ModelDirRef:
    """The directory as a ModelDirRef, or one line on why it is not a model directory."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run id or name, or a local model directory (saved with save_pretrained)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a model directory: give the directory save_pretrained wrote")
    if not (path / CONFIG_FILE).is_file():
        raise CheckpointError(f"{path} holds no {CONFIG_FILE}: not a model directory saved with save_pretrained")
    config = read_config(path)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{path} holds no weights ({' or '.join(WEIGHT_FILES[::2])}): save the model with save_pretrained")
    architectures = config.get("architectures") or []
    return ModelDirRef(path.resolve(), architectures[0] if architectures and isinstance(architectures[0], str) else None)


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE} does not read as JSON ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{path / CONFIG_FILE} names no model_type: not a transformers model config")
    return config


def require_transformers() -> None:
    """One line saying what to install when `transformers` is missing (checked without importing it)."""
    try:
        missing = importlib.util.find_spec("transformers") is None
    except (ImportError, ValueError):  # a broken install reads as a missing one
        missing = True
    if missing:
        raise MlmlabError(f"opening a Hugging Face model directory needs transformers: {HF_EXTRA}")


def directory_stamp(path: Path) -> int:
    """The newest modification time of the directory's files: a model saved again is a new model."""
    return max((entry.stat().st_mtime_ns for entry in path.iterdir() if entry.is_file()), default=0)
