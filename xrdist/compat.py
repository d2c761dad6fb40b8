"""``CachingFileManager``: a drop-in for ``xarray.backends.CachingFileManager``.

Same constructor, methods, pickling, ``repr`` and ``warn_for_unclosed_files`` behaviour,
so an existing xarray backend can switch to xrdist's handle manager by changing one
import. What differs, on purpose:

* Files live in xrdist's process-wide :class:`~xrdist.manager.HandleManager` (unless a
  ``cache=`` mapping is injected, which then holds the open files exactly as in xarray).
* ``acquire_context`` holds a real lease for the whole ``with`` block: the file cannot
  be closed by eviction while the block runs.
* Opening and closing hold the library lock of the opener's library (netCDF4, h5py,
  h5netcdf, rasterio; see :func:`xrdist.locks.library_lock_for`).
* The default ``lock`` is the per-file lock of :mod:`xrdist.locks` when the first
  argument is a local path (one lock per file, whatever the mode), else a private
  ``threading.Lock`` as in xarray. It is used around acquire and close.
* A local file replaced or deleted on disk is detected at the next acquire.

Notes
-----
Thread-safe as xarray's: acquire and close may be called from any thread. Picklable:
the opener, arguments, mode, kwargs, a non-default lock and the manager id travel; the
cache and a default lock do not.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from dataclasses import replace
from typing import Any

from xrdist.locks import file_lock, library_lock_for
from xrdist.manager import OMIT, FileSpec, get_manager
from xrdist.options import get_option

REF_COUNTS: dict[Any, int] = {}
_REF_LOCK = threading.Lock()


def _local_path(args: tuple[Any, ...]) -> str | None:
    if not args or not isinstance(args[0], str | os.PathLike):
        return None
    path = os.fspath(args[0])
    if not isinstance(path, str) or "://" in path:
        return None
    return os.path.abspath(path)


class CachingFileManager:
    """Opens ``opener(*args, mode=mode, **kwargs)`` on demand and keeps it in a cache.

    See ``xarray.backends.CachingFileManager`` for the parameters; ``cache``,
    ``manager_id`` and ``ref_counts`` exist for dependency injection in tests.
    """

    def __init__(
        self,
        opener: Callable[..., Any],
        *args: Any,
        mode: Any = OMIT,
        kwargs: dict[str, Any] | None = None,
        lock: Any = None,
        cache: MutableMapping[Any, Any] | None = None,
        manager_id: Hashable | None = None,
        ref_counts: dict[Any, int] | None = None,
    ) -> None:
        self._opener = opener
        self._args = args
        self._mode = mode
        self._kwargs = {} if kwargs is None else dict(kwargs)
        path = _local_path(args)
        self._use_default_lock = lock is None or lock is False
        if self._use_default_lock:
            self._lock: Any = file_lock(path) if path is not None else threading.Lock()
        else:
            self._lock = lock
        self._cache = cache
        self._manager_id = str(uuid.uuid4()) if manager_id is None else manager_id
        self._spec = FileSpec(
            opener=opener,
            args=args,
            kwargs=tuple(sorted(self._kwargs.items())),
            mode=mode,
            manager_id=self._manager_id,
            path=path,
            lock=library_lock_for(opener),  # held around open and close
        )
        self._key = self._spec.key
        self._ref_counts = REF_COUNTS if ref_counts is None else ref_counts
        with _REF_LOCK:
            self._ref_counts[self._key] = self._ref_counts.get(self._key, 0) + 1

    @contextlib.contextmanager
    def _optional_lock(self, needs_lock: bool) -> Iterator[None]:
        if needs_lock:
            with self._lock:
                yield
        else:
            yield

    def _opened(self) -> None:
        if self._mode == "w":  # never truncate on a reopen
            self._mode = "a"
            self._spec = replace(self._spec, mode="a")

    def _acquire_injected(self) -> tuple[Any, bool]:
        assert self._cache is not None
        try:
            return self._cache[self._key], True
        except KeyError:
            kwargs = dict(self._kwargs)
            if self._mode != OMIT:
                kwargs["mode"] = self._mode
            file = self._opener(*self._args, **kwargs)
            self._opened()
            self._cache[self._key] = file
            return file, False

    def acquire(self, needs_lock: bool = True) -> Any:
        """The open file; opened if it is not cached. It may be evicted after this
        returns; use ``acquire_context`` to keep it open while you use it."""
        with self._optional_lock(needs_lock):
            if self._cache is not None:
                return self._acquire_injected()[0]
            file = get_manager().acquire(self._spec)
            self._opened()
            return file

    @contextlib.contextmanager
    def acquire_context(self, needs_lock: bool = True) -> Iterator[Any]:
        """The open file, kept open (leased) until the block ends. If the block raises
        and the file was opened for it, the file is closed."""
        if self._cache is not None:
            with self._optional_lock(needs_lock):
                file, cached = self._acquire_injected()
            try:
                yield file
            except Exception:
                if not cached:
                    self.close(needs_lock)
                raise
            return
        with self._optional_lock(needs_lock):
            lease = get_manager().lease(self._spec)
            file = lease.__enter__()
            self._opened()
        try:
            yield file
        except Exception:
            lease.__exit__(None, None, None)
            if lease.opened:  # xarray's rule: a file opened for a failed block is closed
                self.close(needs_lock)
            raise
        else:
            lease.__exit__(None, None, None)

    def close(self, needs_lock: bool = True) -> None:
        """Close the file, if open (when its last lease ends, if it is leased)."""
        with self._optional_lock(needs_lock):
            if self._cache is not None:
                file = self._cache.pop(self._key, None)
                if file is not None:
                    file.close()
            else:
                get_manager().close(self._spec)

    def _is_open(self) -> bool:
        if self._cache is not None:
            return self._key in self._cache
        return get_manager().is_open(self._spec)

    def __del__(self) -> None:
        try:
            self._release_on_del()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    def _release_on_del(self) -> None:
        with _REF_LOCK:
            count = self._ref_counts.get(self._key, 1) - 1
            if count:
                self._ref_counts[self._key] = count
            else:
                self._ref_counts.pop(self._key, None)
        if count or not self._is_open():
            return
        if self._lock.acquire(blocking=False):  # only close if we can do so now
            try:
                self.close(needs_lock=False)
            finally:
                self._lock.release()
        if get_option("warn_for_unclosed_files") or _xarray_warns_for_unclosed_files():
            warnings.warn(
                f"deallocating {self}, but file is not already closed. This may indicate a bug.",
                RuntimeWarning,
                stacklevel=2,
            )

    def __getstate__(self) -> tuple[Any, ...]:
        lock = None if self._use_default_lock else self._lock
        return (self._opener, self._args, self._mode, self._kwargs, lock, self._manager_id)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        opener, args, mode, kwargs, lock, manager_id = state
        self.__init__(  # type: ignore[misc]
            opener, *args, mode=mode, kwargs=kwargs, lock=lock, manager_id=manager_id
        )

    def __repr__(self) -> str:
        args_string = ", ".join(map(repr, self._args))
        if self._mode != OMIT:
            args_string += f", mode={self._mode!r}"
        return (
            f"{type(self).__name__}({self._opener!r}, {args_string}, "
            f"kwargs={self._kwargs}, manager_id={self._manager_id!r})"
        )


def _xarray_warns_for_unclosed_files() -> bool:
    try:
        from xarray.core.options import OPTIONS
    except ImportError:  # pragma: no cover - xarray is a dependency
        return False
    return bool(OPTIONS.get("warn_for_unclosed_files", False))
