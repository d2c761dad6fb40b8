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

Values are pickled when they are stored (later changes to them are not kept) and written
in the storing thread: at once, or, inside :func:`batch`, all together in one transaction
when the block ends (opening a file stores its description and its decoded dataset in
one; scanning a stack, every file's description in one). Nothing is written from
another thread, so a forked process never inherits SQLite in the middle of a write, and
a process that ends without exit handlers (a forked pool worker) loses nothing.

Notes
-----
Thread-safe and process-safe: one SQLite connection per thread and process (WAL
journal, so readers never wait for writers).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import os
import pickle
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xrdist.options import get_option

#: Bumped when what is stored changes shape (a FileDescription, a decoded dataset of
#: xrdist's arrays): entries of older schemas are then ignored.
SCHEMA = 2
DATABASE = f"descriptions-v{SCHEMA}.sqlite"

_local = threading.local()
_warned = [False]
#: Values found in the cache since this process started, by kind (for statistics and tests).
loaded: collections.Counter[str] = collections.Counter()
#: The values stored inside the innermost :func:`batch` block, not written yet.
_batch: contextvars.ContextVar[dict[tuple[Path, str], bytes] | None] = contextvars.ContextVar(
    "xrdist_persist_batch", default=None
)


def _version() -> str:
    from xrdist import __version__

    return __version__


@functools.lru_cache(maxsize=16)
def _database_in(folder: str) -> Path:
    return Path(folder) / DATABASE


def database_path() -> Path | None:
    """The database file, or None when the disk cache is off."""
    folder = get_option("description_cache_dir")
    return None if not folder else _database_in(folder)


def _connection(path: Path) -> sqlite3.Connection:
    key = (os.getpid(), path)
    if getattr(_local, "key", None) != key:  # new thread, new process or new folder
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=5, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE IF NOT EXISTS d (key TEXT PRIMARY KEY, value BLOB)")
        _local.key, _local.db = key, db
    return _local.db


def _skip(err: Exception, path: Path | None = None) -> None:
    if not _warned[0]:
        _warned[0] = True
        warnings.warn(
            f"xrdist's description cache at {path or database_path()} is not usable "
            f"({err}); files are described without it. Set xrdist.set_options("
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
    path = database_path()
    if path is None:
        return None
    text = _key(key, kind)
    try:
        blob = (_batch.get() or {}).get((path, text))
        if blob is None:
            row = _connection(path).execute("SELECT value FROM d WHERE key = ?", (text,))
            blob = (row.fetchone() or (None,))[0]
        if blob is None:
            return None
        value = pickle.loads(blob)
        loaded[kind] += 1
        return value
    except (sqlite3.Error, OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        _skip(err, path)
        return None


def store(key: tuple[Any, ...], value: Any, kind: str = DESCRIPTION) -> None:
    """Keep ``value`` for later processes (best effort): pickled now, written now or, in
    a :func:`batch` block, when the block ends."""
    path = database_path()
    if path is None:
        return
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        _skip(err, path)
        return
    pending = _batch.get()
    if pending is not None:
        pending[path, _key(key, kind)] = blob
    else:
        _write({(path, _key(key, kind)): blob})


@contextlib.contextmanager
def batch() -> Iterator[None]:
    """Write the values stored inside the block in one transaction (per database) when
    it ends, even if it raises. Stores in threads that run a copy of this context
    (``contextvars.copy_context().run``) join the batch; a nested block joins the outer
    one. Values stored in the block are found by :func:`load` in it."""
    if _batch.get() is not None:
        yield
        return
    pending: dict[tuple[Path, str], bytes] = {}
    token = _batch.set(pending)
    try:
        yield
    finally:
        _batch.reset(token)
        _write(pending)


def _write(values: dict[tuple[Path, str], bytes]) -> None:
    """One transaction per database for ``values`` (best effort)."""
    by_path: dict[Path, list[tuple[str, bytes]]] = {}
    for (path, text), blob in values.items():
        by_path.setdefault(path, []).append((text, blob))
    for path, rows in by_path.items():
        try:
            db = _connection(path)
            with db:  # a transaction: committed, or rolled back on an error
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO d VALUES (?, ?)", rows)
        except (sqlite3.Error, OSError) as err:
            _skip(err, path)


def clear() -> None:
    """Forget every stored description and dataset (of every process using this folder)."""
    path = database_path()
    if path is None:
        return
    try:
        _connection(path).execute("DELETE FROM d")
    except (sqlite3.Error, OSError) as err:
        _skip(err, path)
