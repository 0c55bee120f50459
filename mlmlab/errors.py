"""User-facing errors: each carries one line that names the problem, and the parts of it as fields.

The CLI prints ``str(error)`` and exits with status 2; the app shows it in a notification, and the
new-run form marks the field named by ``error.key``. The fields repeat what the line says, so a
caller can act on the problem (mark a field, select a run) without reading the text.
Anything that is not an ``MlmlabError`` is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any


class MlmlabError(Exception):
    """A problem the user can fix: bad config, bad input, missing file.

    key: the config key (``train.steps``) or form field (``name``, ``device``, ``preset``) at fault;
    value: the value given for it; run_id: the run the problem is about. Each is None when it does not apply.
    """

    def __init__(self, message: str, *, key: str | None = None, value: Any = None, run_id: int | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value
        self.run_id = run_id


class ConfigError(MlmlabError):
    pass


class DataError(MlmlabError):
    pass


class CheckpointError(MlmlabError):
    pass


class StoreError(MlmlabError):
    pass


class NotationError(MlmlabError):
    pass


def quoted(value: Any, limit: int = 80) -> str:
    """A value as it goes into an error line: quoted, control characters escaped, kept short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
