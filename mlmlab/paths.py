"""Where things live by default: the run database and the cache folder, and what a typed path is.
Kept apart from `store` so choosing a path costs no imports: the app's start-up reads this before
anything heavy (sqlite-utils brings numpy) has loaded."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DEFAULT_DB = Path("runs") / "mlmlab.db"


def default_db_path() -> Path:
    return Path(os.environ.get("MLMLAB_DB") or DEFAULT_DB)


def cache_dir() -> Path:
    """The folder for things worth keeping between runs but safe to lose (the built-in corpus):
    $MLMLAB_CACHE where set, else the platform's user cache folder: $XDG_CACHE_HOME/mlmlab or ~/.cache/mlmlab on Linux."""
    if os.environ.get("MLMLAB_CACHE"):
        return Path(os.environ["MLMLAB_CACHE"])
    return Path(platformdirs.user_cache_dir("mlmlab", appauthor=False))


def path_kind(path: str | Path) -> str | None:
    """'file', 'dir' or None for a path a user typed; never raises (NUL bytes, over-long names, ~nobody)."""
    try:
        path = Path(path).expanduser()
        return "file" if path.is_file() else "dir" if path.is_dir() else None
    except (OSError, ValueError, RuntimeError):
        return None
