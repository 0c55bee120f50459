"""Checkpoint files: written atomically, read back with `weights_only=True` and clear errors.

A checkpoint is a plain dict of tensors, numbers, strings and lists (so the safe unpickler accepts
it): model and optimizer state, step, tokens seen, elapsed time, RNG states, and the config and
vocabulary, so a checkpoint alone is enough to predict.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from mlmlab.errors import CheckpointError

CKPT_PREFIX, CKPT_SUFFIX = "ckpt-", ".pt"
REQUIRED_KEYS = ("model", "step", "config", "vocab", "model_args")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def save_checkpoint(payload: dict[str, Any], path: Path) -> int:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path.stat().st_size


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file is missing")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words every weights_only failure "Weights only load failed"; a refused object says
        # "Unsupported global", while garbage bytes fail on an unknown opcode.
        refused = "Unsupported global" in str(exc)
        reason = "holds objects other than tensors and plain data (refused; it may run code)" if refused else "corrupt"
        raise CheckpointError(f"checkpoint {path}: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: truncated or corrupt ({str(exc).splitlines()[0][:120]})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path}: not an mlmlab checkpoint")
    return payload


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Complete checkpoint files in a run folder, oldest first (temporary files are never listed)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"{CKPT_PREFIX}*{CKPT_SUFFIX}") if not p.name.startswith("."))


def step_of(path: Path) -> int:
    return int(path.stem.removeprefix(CKPT_PREFIX))
