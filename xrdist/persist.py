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

Values are pickled when they are stored (so later changes to them are not kept) and
written in batches, one transaction per batch, by a background thread a moment later;
:func:`flush` writes what is waiting at once, and runs at exit. A value waiting to be
written is found by :func:`load` in this process; another process sees it after the
flush. Writing a value per open, in the opening thread, cost about a sixth of a small
file's first open.

Notes
-----
Thread-safe and process-safe: one SQLite connection per thread and process (WAL
journal, so readers never wait for writers). A forked child starts with nothing
waiting (its parent writes its own values).
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import pickle
import sqlite3
import threading
import time
import warnings
from pathlib import Path
from typing import Any

from xrdist.options import get_option

#: Bumped when what is stored changes shape (a FileDescription, a decoded dataset of
#: xrdist's arrays): entries of older schemas are then ignored.
SCHEMA = 2
DATABASE = f"descriptions-v{SCHEMA}.sqlite"

#: How long a stored value waits for others, so that one transaction writes them all.
WRITE_DELAY = 0.05

_local = threading.local()
_warned = [False]
#: Values found on disk since this process started, by kind (for statistics and tests).
loaded: collections.Counter[str] = collections.Counter()
#: Pickles stored but not written yet, by database and key.
_pending: dict[Path, dict[str, bytes]] = {}
_pending_lock = threading.Lock()
_flush_lock = threading.Lock()
_writer: list[threading.Thread] = []


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
    path = database_path()
    if path is None:
        return None
    text = _key(key, kind)
    try:
        with _pending_lock:
            blob = _pending.get(path, {}).get(text)
        if blob is None:
            row = _connection(path).execute("SELECT value FROM d WHERE key = ?", (text,))
            blob = (row.fetchone() or (None,))[0]
        if blob is None:
            return None
        value = pickle.loads(blob)
        loaded[kind] += 1
        return value
    except (sqlite3.Error, OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
        _skip(err)
        return None


def store(key: tuple[Any, ...], value: Any, kind: str = DESCRIPTION) -> None:
    """Keep ``value`` for later processes (best effort): pickled now, written to disk by
    the background writer a moment later (see :func:`flush`)."""
    path = database_path()
    if path is None:
        return
    try:
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        _skip(err)
        return
    with _pending_lock:
        _pending.setdefault(path, {})[_key(key, kind)] = blob
        if not _writer:
            writer = threading.Thread(target=_write_later, name="xrdist-persist", daemon=True)
            _writer.append(writer)
            writer.start()


def _write_later() -> None:
    """The background writer: waits :data:`WRITE_DELAY` for more values, writes all that
    wait, and ends when no more came meanwhile (the next store starts another)."""
    while True:
        time.sleep(WRITE_DELAY)
        flush()
        with _pending_lock:
            if not any(_pending.values()):
                _writer.clear()
                return


def flush() -> None:
    """Write every stored value still waiting, now, one transaction per database.

    Runs in the background writer and at exit; call it before another process must see
    what this one stored. Thread-safe.
    """
    with _flush_lock:
        with _pending_lock:
            batches = {path: dict(values) for path, values in _pending.items() if values}
        for path, values in batches.items():
            try:
                db = _connection(path)
                db.execute("BEGIN")
                try:
                    db.executemany(
                        "INSERT OR REPLACE INTO d (key, value) VALUES (?, ?)", values.items()
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as err:
                _skip(err)
            with _pending_lock:  # written (or given up): forget those not stored anew since
                waiting = _pending.get(path, {})
                for text, blob in values.items():
                    if waiting.get(text) is blob:
                        del waiting[text]


def clear() -> None:
    """Forget every stored description (of every process using this folder)."""
    path = database_path()
    if path is None:
        return
    with _flush_lock:  # not while a batch is being written: it would come back
        with _pending_lock:
            _pending.pop(path, None)
        try:
            _connection(path).execute("DELETE FROM d")
        except (sqlite3.Error, OSError) as err:
            _skip(err)


def _forget_after_fork() -> None:
    global _pending_lock, _flush_lock
    _pending.clear()
    _writer.clear()
    _pending_lock, _flush_lock = threading.Lock(), threading.Lock()


atexit.register(flush)
os.register_at_fork(after_in_child=_forget_after_fork)
