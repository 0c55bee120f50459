"""Where things live by default: the run database and the cache folder, and what a typed path is.
Kept apart from `store` so choosing a path costs no imports: the app's start-up reads this before
anything heavy (sqlite-utils brings numpy) has loaded."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import platformdirs

from mlmlab.errors import StoreError

DEFAULT_DB = Path("runs") / "mlmlab.db"


def default_db_path() -> Path:
    return Path(os.environ.get("MLMLAB_DB") or DEFAULT_DB)


def require_db_folder(db_path: str | Path) -> None:
    """Raise a StoreError (one line, naming the folder) if the folder a database should be read from
    does not exist: a typed path whose folder is missing is a typo, not an empty database. Readers
    (`mlmlab runs`, `predict`, `stop`, the app's start, every read-only `Store`) call this before
    opening anything, so they never create a folder or a file; writers (`mlmlab run`) create what they
    need instead. The default `runs/mlmlab.db` is exempt: a fresh project has no `runs/` until its first run.
    """
    path = Path(db_path)
    if path == DEFAULT_DB:
        return
    folder = path.parent
    try:
        if stat.S_ISDIR(os.stat(folder).st_mode):
            return
        problem = "is not a folder"
    except (FileNotFoundError, NotADirectoryError):
        problem = "does not exist"
    except (OSError, ValueError):
        return  # no permission, a name the OS refuses: opening the database says what is wrong
    raise StoreError(f"database {path}: its folder {folder} {problem}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path` and rename it over `path`, so a reader sees the
    old file or the new one, never half of one. Raises OSError; the temp file ends in `.tmp`."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    try:
        os.replace(tmp.name, path)
    except OSError:
        os.unlink(tmp.name)
        raise


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
