"""Checkpoint files: written atomically, read back with `weights_only=True` and clear errors.

A checkpoint is a plain dict of tensors, numbers, strings and lists (so the safe unpickler accepts
it): model and optimizer state, step, tokens seen, elapsed time, RNG states, and the config and
vocabulary, so a checkpoint alone is enough to predict.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from mlmlab.errors import CheckpointError

CKPT_PREFIX, CKPT_SUFFIX = "ckpt-", ".pt"
CKPT_NAME = re.compile(r"ckpt-(\d{1,18})\.pt")  # what checkpoint_path writes; a user's ckpt-best.pt is not ours
TEMP_NAME = re.compile(r"\.ckpt-\d+\.pt\.(\d+)\.tmp")
REQUIRED_KEYS = ("model", "step", "config", "vocab", "model_args")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"{CKPT_PREFIX}{step:08d}{CKPT_SUFFIX}"


def save_checkpoint(payload: dict[str, Any], path: Path) -> int:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file.

    Any failure (disk full, folder unwritable or deleted) removes the temporary file and raises a
    one-line `CheckpointError`; files already there are untouched.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, (OSError, RuntimeError)):
            raise CheckpointError(f"checkpoint {path}: cannot write ({_write_reason(exc)})") from None
        raise
    _fsync_dir(path.parent)
    return path.stat().st_size


def _write_reason(exc: BaseException) -> str:
    """The cause of a failed write in a few words. torch.save wraps the OSError of a full disk in a
    RuntimeError ("file write failed"), so look down the chain and at the text."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = _first_line(exc)
    if "write failed" in text or "file write" in text:
        return "write failed: is the disk full?"
    return text[:160]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:160]


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """Delete temporary checkpoint files left by killed writers (never this process's own)."""
    folder = Path(run_dir)
    removed = []
    if not folder.is_dir():
        return removed
    for tmp in folder.iterdir():
        match = TEMP_NAME.fullmatch(tmp.name)
        if match and int(match.group(1)) != os.getpid():
            try:
                tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


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
        with warnings.catch_warnings():  # torch warns about odd pickle protocols: the error line says it all
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words every weights_only failure "Weights only load failed"; only a refused global
        # (a reference to code) means "may run code", garbage bytes fail on an unknown opcode.
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            reason = "holds objects other than tensors and plain data (refused; it may run code)"
        else:
            reason = "truncated or corrupt (not a file the safe loader can read)"
        raise CheckpointError(f"checkpoint {path}: {reason}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - the bytes are untrusted: any parser failure means a bad file
        raise CheckpointError(f"checkpoint {path}: truncated or corrupt ({_first_line(exc)})") from None
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(f"checkpoint {path}: not an mlmlab checkpoint")
    problem = _shape_problem(payload)
    if problem:
        raise CheckpointError(f"checkpoint {path}: not an mlmlab checkpoint ({problem})")
    return payload


def _shape_problem(payload: dict[str, Any]) -> str | None:
    """What is wrong with the payload's structure, if anything (so later code can trust its types)."""
    step = payload["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"step is {step!r}"
    if not isinstance(payload["model"], dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload["model"].items()
    ):
        return "model is not a dict of tensors"
    for key in ("config", "vocab", "model_args"):
        if not isinstance(payload[key], dict):
            return f"{key} is not a table"
    for key in ("optimizer", "rng"):
        if key in payload and not isinstance(payload[key], dict):
            return f"{key} is not a table"
    return None


def checkpoint_files(run_dir: Path) -> list[Path]:
    """Complete checkpoint files in a run folder, oldest first (temporary files are never listed)."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if CKPT_NAME.fullmatch(p.name) and p.is_file()), key=step_of)


def step_of(path: Path) -> int:
    return int(path.stem.removeprefix(CKPT_PREFIX))
