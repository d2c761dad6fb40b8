"""Locks of the right scope: one per file, one per native library that is not thread-safe.

Every lock here is a :class:`NamedLock`: a small picklable value that names its scope
(``("file", canonical_path)`` or ``("library", name)``) and finds the real
``threading.RLock`` in this process's registry each time it is acquired. A lock
therefore travels to a dask worker as its name and means the same thing there.

Which lock covers which calls
-----------------------------
============  ===============================================  =========================
lock          covers                                           why
============  ===============================================  =========================
``netcdf-c``  every call into a native library that is not     netCDF-C is not
              thread-safe: open, every metadata call           thread-safe at all; its
              (dims, variables, attributes, chunking),         own HDF5 copy neither.
              reads, close. (netCDF4-python)                   xarray's engine crashes
                                                               when metadata calls run
                                                               outside its lock.
``hdf5``      open, metadata walk and close through h5py.      h5py serialises each
              Library-path reads too (h5py also takes its      call itself; this lock
              own global lock; ours makes a multi-call walk    keeps a walk of many
              atomic). Byte-range reads take no library lock.  calls consistent.
``gdal``      GDAL/rasterio open, metadata and close.          GDAL dataset handles
                                                               are not thread-safe.
file          reads and writes through one handle whose        a handle that seeks
              library is thread-safe across handles but        (tifffile, GDAL, Python
              not within one (GDAL, tifffile, plain files);    files) must not be used
              every write.                                     by two threads at once.
============  ===============================================  =========================

The ``netcdf-c`` lock is shared with xarray's ``netcdf4`` engine (it wraps xarray's
``NETCDFC_LOCK``): both engines may run in one process, and netCDF-C must never be
entered by two threads at once, whoever calls it.

Order: lease first, then the file lock, then the library lock. Never enter a lease while
holding a library lock: the lease may wait for another thread's open, which needs that
lock. The handle manager's own lock is never held while any of these is taken.

Notes
-----
Thread-safe: every function and class here. Picklable: :class:`NamedLock` (by name).
After ``os.fork`` the child starts with fresh, unlocked registries, because a lock held
by another parent thread at fork time would otherwise stay locked forever in the child.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

#: Library-lock names used by xrdist's readers.
HDF5 = "hdf5"
NETCDF_C = "netcdf-c"
GDAL = "gdal"


class _ReentrantAround:
    """A re-entrant lock around a non-re-entrant lock that other code also takes.

    The inner lock is taken on a thread's first acquire and released on its last
    release, so xrdist's code may nest acquisitions while other libraries (xarray's
    engines) that take the inner lock directly still exclude us and we them.
    """

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._owner: int | None = None
        self._count = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        me = threading.get_ident()
        if self._owner == me:
            self._count += 1
            return True
        if not self._inner.acquire(blocking, timeout):
            return False
        self._owner, self._count = me, 1
        return True

    def release(self) -> None:
        if self._owner != threading.get_ident():
            raise RuntimeError("cannot release un-acquired lock")
        self._count -= 1
        if self._count == 0:
            self._owner = None
            self._inner.release()


def _shared_library_lock(name: str) -> Any:
    """The lock of library ``name``, shared with xarray's engines where they have one.

    xarray's ``netcdf4`` engine serialises netCDF-C with its ``NETCDFC_LOCK``; if ours were
    a different lock, the two engines would call netCDF-C at once and crash the process.
    """
    if name == NETCDF_C:
        from xarray.backends.locks import NETCDFC_LOCK

        return _ReentrantAround(NETCDFC_LOCK)
    return threading.RLock()


class _Registry:
    """Name -> RLock. Locks live while somebody holds them or a reference to them."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: weakref.WeakValueDictionary[tuple[str, str], threading.RLock] = (
            weakref.WeakValueDictionary()
        )
        # Library locks are few and permanent: keep them strongly.
        self._library: dict[str, Any] = {}

    def get(self, scope: str, name: str) -> Any:
        with self._guard:
            if scope == "library":
                lock = self._library.get(name)
                if lock is None:
                    lock = self._library[name] = _shared_library_lock(name)
                return lock
            key = (scope, name)
            lock = self._locks.get(key)
            if lock is None:
                lock = threading.RLock()
                self._locks[key] = lock
            return lock

    def __len__(self) -> int:
        return len(self._locks) + len(self._library)


_registry = _Registry()


def _reset_after_fork() -> None:
    global _registry
    _registry = _Registry()


os.register_at_fork(after_in_child=_reset_after_fork)


def canonical_path(path: str | os.PathLike[str]) -> str:
    """The path that names a file for locks and cache keys: absolute, symlinks resolved."""
    return os.path.realpath(os.fspath(path))


@dataclass(frozen=True)
class NamedLock:
    """A re-entrant lock identified by ``(scope, name)``, resolved per process.

    Use :func:`file_lock` and :func:`library_lock` rather than the constructor. Equal
    names give the same underlying lock in one process. Picklable (a few dozen bytes);
    thread-safe. Re-entrant: a thread holding it may acquire it again.
    """

    scope: str
    name: str
    _held: list[Any] = field(default_factory=list, init=False, repr=False, compare=False)

    def _resolve(self) -> Any:
        return _registry.get(self.scope, self.name)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        lock = self._resolve()
        ok = lock.acquire(blocking, timeout)
        if ok:
            # Keep the resolved lock alive (and findable by release) while held.
            self._held.append(lock)
        return ok

    def release(self) -> None:
        if not self._held:
            raise RuntimeError(f"release of un-acquired lock {self!r}")
        lock = self._held[-1]
        lock.release()  # raises, and keeps the record, if this thread is not the owner
        self._held.pop()

    def locked(self) -> bool:
        """True if another thread holds this lock (a snapshot, for diagnostics). The
        lock is re-entrant, so a thread holding it sees False."""
        lock = self._resolve()
        if lock.acquire(blocking=False):
            lock.release()
            return False
        return True

    def __enter__(self) -> NamedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __reduce__(self) -> tuple[type[NamedLock], tuple[str, str]]:
        return (NamedLock, (self.scope, self.name))


def file_lock(path: str | os.PathLike[str]) -> NamedLock:
    """The lock of one file, whatever the mode it is opened in (keyed by canonical path)."""
    return NamedLock("file", canonical_path(path))


def library_lock_for(opener: Any) -> NamedLock | None:
    """The library lock to hold around ``opener`` and ``close`` of what it returns, for
    the openers of the field's libraries (netCDF4, h5py, h5netcdf, rasterio); else None."""
    package = getattr(opener, "__module__", "") or ""
    root = package.split(".")[0]
    name = {"netCDF4": NETCDF_C, "h5py": HDF5, "h5netcdf": HDF5, "rasterio": GDAL}.get(root)
    return None if name is None else library_lock(name)


def library_lock(name: str) -> NamedLock:
    """The process-wide lock of one native library (``HDF5``, ``NETCDF_C``, ``GDAL``)."""
    return NamedLock("library", name)
