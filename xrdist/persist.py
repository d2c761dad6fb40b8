"""File descriptions on disk: a file described once is not walked again by a new process.

Opening a stack of thousands of files is dominated by reading each file's metadata. The
in-memory cache of :mod:`xrdist.description` saves that within a process; this module
keeps the descriptions in a SQLite database under the option ``description_cache_dir``
(default ``~/.cache/xrdist``), so a new process (a restarted notebook kernel, a dask
worker, the next day's script) finds them too. Entries are keyed by the file's canonical
path **and identity** (device, inode, size, modification time in ns, see
:class:`~xrdist.identity.FileIdentity`), the library, the group and the version of
xrdist: a rewritten, replaced or touched file misses and is walked again; nothing stale
is ever returned.

The cache is an accelerator only: if the folder cannot be written or the database is
locked or damaged, it is skipped (with one warning) and files are walked as before.
Values are pickles written by this user's own processes; point the option at a folder
only you can write.

Notes
-----
Thread-safe and process-safe: one SQLite connection per thread and process (WAL
journal, so readers never wait for writers).
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

from xrdist.options import get_option

#: Bumped when FileDescription changes shape: older entries are then ignored.
SCHEMA = 1
DATABASE = f"descriptions-v{SCHEMA}.sqlite"

_local = threading.local()
_warned = [False]


def _version() -> str:
    from xrdist import __version__

    return __version__


def database_path() -> Path | None:
    """The database file, or None when the disk cache is off."""
    folder = get_option("description_cache_dir")
    return None if not folder else Path(folder) / DATABASE


def _connection() -> sqlite3.Connection | None:
    path = database_path()
    if path is None:
        return None
    key = (os.getpid(), str(path))
    if getattr(_local, "key", None) != key:  # new thread, new process or new folder
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS d (key TEXT PRIMARY KEY, value BLOB)")
        _local.key, _local.db = key, db
    return _local.db


def _skip(err: Exception) -> None:
    if not _warned[0]:
        _warned[0] = True
        warnings.warn(
            f"xrdist's description cache at {database_path()} is not usable ({err}); "
            "files are described without it. Set xrdist.set_options("
            "description_cache_dir=...) to another folder, or None to silence this.",
            RuntimeWarning,
            stacklevel=4,
        )


def _key(key: tuple[Any, ...]) -> str:
    path, identity, library, group = key
    ident = (identity.device, identity.inode, identity.size, identity.mtime_ns)
    fields = (path, *ident, library, group or "", _version())
    return "\x00".join(map(str, fields))


def load(key: tuple[Any, ...]) -> Any | None:
    """The stored description for ``(path, identity, library, group)``, or None."""
    try:
        db = _connection()
        if db is None:
            return None
        row = db.execute("SELECT value FROM d WHERE key = ?", (_key(key),)).fetchone()
        return None if row is None else pickle.loads(row[0])
    except (sqlite3.Error, OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        _skip(err)
        return None


def store(key: tuple[Any, ...], description: Any) -> None:
    """Keep ``description`` for later processes (best effort)."""
    try:
        db = _connection()
        if db is None:
            return
        blob = pickle.dumps(description, protocol=pickle.HIGHEST_PROTOCOL)
        db.execute("INSERT OR REPLACE INTO d (key, value) VALUES (?, ?)", (_key(key), blob))
    except (sqlite3.Error, OSError, pickle.PicklingError) as err:
        _skip(err)


def clear() -> None:
    """Forget every stored description (of every process using this folder)."""
    try:
        db = _connection()
        if db is not None:
            db.execute("DELETE FROM d")
    except (sqlite3.Error, OSError) as err:
        _skip(err)
