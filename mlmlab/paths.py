"""Where the run database lives by default. Kept apart from `store` so choosing the path costs no imports:
the app's start-up reads this before anything heavy (sqlite-utils brings numpy) has loaded."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DB = Path("runs") / "mlmlab.db"


def default_db_path() -> Path:
    return Path(os.environ.get("MLMLAB_DB") or DEFAULT_DB)
