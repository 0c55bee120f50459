"""User-facing errors: each carries one line that names the problem.

The CLI prints ``str(error)`` and exits with status 2; the app shows it in a notification.
Anything that is not an ``MlmlabError`` is a bug and keeps its traceback.
"""


class MlmlabError(Exception):
    """A problem the user can fix: bad config, bad input, missing file."""


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
