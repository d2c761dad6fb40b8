"""Process-wide options: ``set_options`` and ``get_options``.

``set_options`` works as a plain call (the change stays) and as a context manager
(the previous values come back on exit), like ``xarray.set_options``.

Notes
-----
Options are process-wide, not per thread: changing them while other threads read
files is allowed (every option is read once per use), but a ``with set_options(...)``
block in one thread changes what all threads see. On a ``distributed`` cluster,
set options on the workers with ``client.run(xrdist.set_options, ...)``.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable
from typing import Any

#: Upper cap of the default handle-cache size, whatever the descriptor limit.
DEFAULT_CACHE_CAP = 1024


def default_file_cache_maxsize() -> int:
    """Half the soft ``RLIMIT_NOFILE`` of this process, at least 8 and at most 1024.

    Half leaves room for sockets, pipes and the files other code opens; the cap keeps
    the memory that native libraries hold per open file (metadata, chunk caches) sane.
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return DEFAULT_CACHE_CAP
    return max(8, min(DEFAULT_CACHE_CAP, soft // 2))


def default_description_cache_dir() -> str:
    """``$XRDIST_CACHE_DIR``, else ``$XDG_CACHE_HOME/xrdist``, else ``~/.cache/xrdist``."""
    if os.environ.get("XRDIST_CACHE_DIR") is not None:
        return os.environ["XRDIST_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xrdist")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _positive_int_or_none(value: Any) -> bool:
    return value is None or _positive_int(value)


_VALIDATORS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "file_cache_maxsize": (_positive_int, "a positive integer"),
    "file_cache_maxweight": (_positive_int_or_none, "a positive integer or None"),
    "warn_for_unclosed_files": (lambda v: isinstance(v, bool), "True or False"),
    "byte_range_reads": (lambda v: isinstance(v, bool), "True or False"),
    "compiled_reads": (lambda v: isinstance(v, bool) or v == "auto", "True, False or 'auto'"),
    "read_threads": (_positive_int_or_none, "a positive integer or None"),
    "decode_in_readers": (lambda v: isinstance(v, bool), "True or False"),
    "description_cache_dir": (
        lambda v: v is None or isinstance(v, str | os.PathLike),
        "a folder (str or path), or None",
    ),
}

_OPTIONS: dict[str, Any] = {
    "file_cache_maxsize": default_file_cache_maxsize(),
    "file_cache_maxweight": None,
    "warn_for_unclosed_files": False,
    "byte_range_reads": True,
    "compiled_reads": "auto",
    "read_threads": None,
    "decode_in_readers": True,
    "description_cache_dir": default_description_cache_dir() or None,
}

_lock = threading.Lock()
# Called with the names of the options that changed, after they changed.
_listeners: list[Callable[[set[str]], None]] = []


def get_options() -> dict[str, Any]:
    """A copy of the current options."""
    return dict(_OPTIONS)


def get_option(name: str) -> Any:
    """The current value of one option."""
    return _OPTIONS[name]


def on_change(callback: Callable[[set[str]], None]) -> None:
    """Register ``callback(changed_names)``, called after any ``set_options`` change."""
    _listeners.append(callback)


def _apply(new: dict[str, Any]) -> None:
    with _lock:
        changed = {k for k, v in new.items() if _OPTIONS[k] != v}
        _OPTIONS.update(new)
    if changed:
        for callback in list(_listeners):
            callback(changed)


class set_options:  # named like xarray.set_options, used like a function
    """Set xrdist options, for good or within a ``with`` block.

    Parameters
    ----------
    file_cache_maxsize : int
        Most open file handles kept by this process's handle cache (leased handles
        may exceed it, see ``xrdist.manager``). Default: half the soft descriptor
        limit, between 8 and 1024.
    file_cache_maxweight : int or None
        Optional bound on the summed *weight* of open handles (a weight is the memory
        a library keeps for an open file, such as a chunk cache, in bytes). ``None``
        (default) bounds by count only.
    warn_for_unclosed_files : bool
        Warn when a ``CachingFileManager`` is garbage-collected with its file open,
        as xarray's option of the same name does.
    byte_range_reads : bool
        Read chunked HDF5/netCDF-4 variables by byte ranges and decode them outside
        HDF5's global lock (default True); False reads everything through h5py.
    compiled_reads : bool or "auto"
        Read, inflate and unshuffle the deflated HDF5 chunks of a stack's window
        several files at a time in one compiled call that runs without the GIL, so that
        reads scale with cores (see :mod:`xrdist.groupread`). It needs numba (the
        ``fast`` extra) and libdeflate (imagecodecs ships it), and costs, once per
        process, about 0.3 s and 100 MiB to load numba and the loop (compiled by the
        first process, in about a second, then loaded from numba's cache; the memory is
        8 MiB where numbagg has already loaded numba). True uses it from the
        first read; ``"auto"`` (default) once numba is loaded in this process (by
        numbagg's kernels, say) or it has read
        :data:`~xrdist.groupread.AUTO_AFTER_BYTES` of stack windows, where that cost
        has become small against the reads; False never. The values are the same.
    read_threads : int or None
        Threads that read and decode the files of one window of a stack; 1 reads them
        one after another in the calling thread. Default None: on a dask.distributed
        worker, the worker's threads (its share of the machine: readers per CPU of the
        machine in each of several workers would crowd the cores with threads taking
        turns at the GIL); elsewhere the CPUs this process may use (dask's count, which
        honours CPU affinity and container quotas). See
        :func:`xrdist.array.reader_threads`.
    decode_in_readers : bool
        Apply xarray's masking and scale/offset to each file's part of a stacked
        window as the reader threads read it (default True), instead of to the whole
        window afterwards in the task's thread; same values, less memory, every core.
        Takes effect for datasets opened after the change.
    description_cache_dir : str or None
        Folder of the on-disk cache of file descriptions (see ``xrdist.persist``), so a
        file described once is not walked again by a new process until it changes.
        Default ``$XRDIST_CACHE_DIR``, else ``$XDG_CACHE_HOME/xrdist``, else
        ``~/.cache/xrdist``; None (or ``XRDIST_CACHE_DIR=""``) keeps descriptions in
        memory only.

    Examples
    --------
    >>> import xrdist
    >>> with xrdist.set_options(file_cache_maxsize=16):
    ...     pass
    """

    def __init__(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            if name not in _VALIDATORS:
                valid = ", ".join(sorted(_VALIDATORS))
                raise ValueError(f"{name!r} is not an xrdist option; valid options: {valid}")
            check, expected = _VALIDATORS[name]
            if not check(value):
                raise ValueError(f"option {name!r} must be {expected}, got {value!r}")
        self._previous = {name: _OPTIONS[name] for name in kwargs}
        _apply(kwargs)

    def __enter__(self) -> set_options:
        return self

    def __exit__(self, *exc: object) -> None:
        _apply(self._previous)
