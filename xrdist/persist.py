"""File descriptions on disk: a file described once is not walked again by a new process.

The same database keeps each file's decoded dataset per set of decoding options, so that
reopening a file one by one skips xarray's decoding too (see
:func:`xrdist.datasets.decoded_dataset`).

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

import collections
import os
import pickle
import sqlite3
import threading
import warnings
from pathlib import Path
from typing import Any

from xrdist.options import get_option

#: Bumped when what is stored changes shape (a FileDescription, a decoded dataset of
#: xrdist's arrays): entries of older schemas are then ignored.
SCHEMA = 2
DATABASE = f"descriptions-v{SCHEMA}.sqlite"

_local = threading.local()
_warned = [False]
#: Values found on disk since this process started, by kind (for statistics and tests).
loaded: collections.Counter[str] = collections.Counter()


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


def _key(key: tuple[Any, ...], kind: str) -> str:
    path, identity, library, group, *extra = key
    ident = (identity.device, identity.inode, identity.size, identity.mtime_ns)
    fields = (path, *ident, library, group or "", _version(), *extra)
    prefix = "" if kind == DESCRIPTION else f"{kind}\x00"
    return prefix + "\x00".join(map(str, fields))


#: What is stored: a file's description (:mod:`xrdist.description`), or a file's decoded,
#: lazy dataset for one set of decoding options (:mod:`xrdist.datasets`), keyed by
#: ``(path, identity, library, group, *more)``.
DESCRIPTION, DATASET = "description", "dataset"


def load(key: tuple[Any, ...], kind: str = DESCRIPTION) -> Any | None:
    """The stored value for ``(path, identity, library, group, *more)``, or None."""
    try:
        db = _connection()
        if db is None:
            return None
        row = db.execute("SELECT value FROM d WHERE key = ?", (_key(key, kind),)).fetchone()
        if row is None:
            return None
        value = pickle.loads(row[0])
        loaded[kind] += 1
        return value
    except (sqlite3.Error, OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        _skip(err)
        return None


def store(key: tuple[Any, ...], value: Any, kind: str = DESCRIPTION) -> None:
    """Keep ``value`` for later processes (best effort)."""
    try:
        db = _connection()
        if db is None:
            return
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        db.execute("INSERT OR REPLACE INTO d (key, value) VALUES (?, ?)", (_key(key, kind), blob))
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
