"""Opening the run database: WAL, the busy timeout, read-only opens, and errors as one line.

WAL mode and a busy timeout let readers read while several runs write. Every write transaction
starts with BEGIN IMMEDIATE: it takes the write lock first (waiting up to the busy timeout), so it
can never fail half-way with "database is locked" the way a read that upgrades to a write can.
A connection belongs to the thread that opened it (sqlite3's rule): open one `Store` per thread or
process. A read-only open (`mode=ro` and `query_only`) cannot change data, and never migrates.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from sqlite_utils import Database

from mlmlab.errors import StoreError
from mlmlab.paths import default_db_path, require_db_folder
from mlmlab.store.schema import MIN_READ_VERSION, SCHEMA_VERSION, TABLES, migrations

BUSY_TIMEOUT_MS = 30_000

_Self = TypeVar("_Self", bound="StoreConnection")


def clean_text(text: str) -> str:
    """Text SQLite can store: lone surrogates (from a command line that was not UTF-8) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def describe_sqlite_error(exc: BaseException, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> str:
    """What an SQLite error means for the user, in a few words."""
    text = str(exc)
    if "file is not a database" in text or "malformed" in text:
        return "not an SQLite database, or corrupt"
    if "readonly" in text or "read-only" in text:
        return "read-only (cannot write)"
    if "unable to open" in text:
        return "cannot open the file (missing folder or no permission)"
    if "locked" in text or "busy" in text:
        return f"locked by another process for over {busy_timeout_ms / 1000:g} s"
    if "full" in text:
        return "the disk is full"
    if "disk I/O error" in text:
        return "disk I/O error (was the file deleted, or the disk removed or full?)"
    return " ".join(text.split())


class StoreConnection:
    """A connection to the run database. `readonly=True` opens it so no statement can change it.

    `busy_timeout_ms` is how long a statement waits for a lock: writers wait long, an interactive
    reader may prefer to fail fast and say the database is locked.
    """

    def __init__(self, path: str | Path | None = None, readonly: bool = False, busy_timeout_ms: int = BUSY_TIMEOUT_MS,
                 must_exist: bool = False):
        self.path = Path(path) if path is not None else default_db_path()
        self.readonly = readonly
        self.must_exist = must_exist or readonly  # a reader, or a writer to runs that must already be there
        self.busy_timeout_ms = busy_timeout_ms
        self.db = Database(self._connect())
        self._identity = self._file_identity()
        try:
            self._prepare()
        except sqlite3.Error as exc:
            self.close()
            if not (readonly and "unable to open" in str(exc) and self._folder_is_read_only()):
                raise StoreError(f"database {self.path}: {self._open_problem(exc)}") from None
            # A WAL database in a read-only folder (an archive, a read-only mount) whose -shm file
            # is gone: SQLite cannot create one. Nothing can be writing there, so read it immutable.
            self.db = Database(self._connect(immutable=True))
            try:
                self._prepare()
            except BaseException as again:
                self.close()
                if isinstance(again, sqlite3.Error):
                    raise StoreError(f"database {self.path}: {self._open_problem(again)}") from None
                raise
        except BaseException:
            self.close()
            raise

    def _connect(self, immutable: bool = False) -> sqlite3.Connection:
        if self.path.is_dir():
            raise StoreError(f"database {self.path}: is a folder, not a database file")
        if self.must_exist:
            require_db_folder(self.path)  # a missing folder is a typo: say so, and create nothing
            if not self.path.is_file():
                raise StoreError(f"database {self.path}: no such file")
        if self.readonly:
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_ms / 1000)
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {self._open_problem(exc)}") from None
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000)
            except OSError as exc:
                raise StoreError(f"database {self.path}: cannot create its folder ({exc.strerror})") from None
            except sqlite3.Error as exc:
                raise StoreError(f"database {self.path}: {self._open_problem(exc)}") from None
        conn.row_factory = sqlite3.Row
        return conn

    def _file_identity(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def check_same_file(self) -> None:
        """Raise a StoreError if the database file was deleted or replaced since this Store opened it.

        SQLite keeps writing to a deleted file's open inode, so without this check a run whose
        database was removed (or swapped for another) would log into nothing, silently.
        """
        now = self._file_identity()
        if now != self._identity:
            what = "deleted" if now is None else "replaced by another file"
            raise StoreError(f"database {self.path} was {what} while it was open")

    def _folder_is_read_only(self) -> bool:
        return not os.access(self.path.resolve().parent, os.W_OK)

    def _open_problem(self, exc: sqlite3.Error) -> str:
        if "unable to open" in str(exc) and self._folder_is_read_only():
            return f"cannot write in its folder {self.path.resolve().parent} (read-only or no permission)"
        return describe_sqlite_error(exc, self.busy_timeout_ms)

    def _prepare(self) -> None:
        self.db.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        version = self._check_version()
        if self.readonly:
            self.db.execute("PRAGMA query_only = ON")  # a second lock on the door mode=ro already shut
            if version < MIN_READ_VERSION:
                raise StoreError(f"database {self.path}: not an mlmlab database yet (run `mlmlab run` to create it)")
            return
        self._enable_wal()
        self.db.execute("PRAGMA synchronous = NORMAL")  # with WAL: durable at checkpoints, never corrupt
        self.db.execute("PRAGMA foreign_keys = ON")
        if version < SCHEMA_VERSION:
            # Several processes may open a new or old database at once (four runs started together):
            # the write lock makes exactly one of them migrate; the others wait, then find it done.
            with self.transaction():
                version = self._check_version()
                if version < SCHEMA_VERSION:
                    if version == 0 and self._has_foreign_tables():
                        raise StoreError(f"database {self.path}: holds tables that are not mlmlab's; choose another --db")
                    migrations.apply(self.db)
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _enable_wal(self) -> None:
        """Switch the file to WAL (a lasting property of the file: after the first open, a no-op).

        The switch needs the file to itself, and SQLite does not run the busy handler for it: when
        several processes open a new database at once (four runs started together), the losers
        get "database is locked" at once. So retry, with jittered backoff, within the busy timeout,
        and stop as soon as any process (this one or another) has made the file WAL.
        """
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.005
        while self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            try:
                self.db.execute("PRAGMA journal_mode = WAL").fetchall()
                return  # WAL, or a file system without it: SQLite then keeps its rollback journal
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.2)

    def _check_version(self) -> int:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this mlmlab understands "
                f"({SCHEMA_VERSION}); upgrade mlmlab"
            )
        return version

    def _has_foreign_tables(self) -> bool:
        names = set(self.db.table_names()) - {"_sqlite_migrations"}
        return bool(names - set(TABLES))

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction that holds the write lock from its first statement (BEGIN IMMEDIATE).

        A deferred BEGIN would read first and upgrade to a write later; in WAL mode that upgrade
        fails at once with "database is locked" whenever another process committed in between,
        without waiting for the busy timeout. Nested calls become savepoints.
        """
        conn = self.db.conn
        try:
            if conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise StoreError(f"database {self.path}: {describe_sqlite_error(exc, self.busy_timeout_ms)}") from None

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        try:
            return [dict(row) for row in self.db.query(sql, list(params))]
        except sqlite3.Error as exc:
            raise StoreError(f"database {self.path}: {describe_sqlite_error(exc, self.busy_timeout_ms)}") from None
