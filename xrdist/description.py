"""What a file holds, apart from its data: the result of walking its metadata once.

:class:`FileDescription` and :class:`VariableDescription` are plain data: dimensions,
variables with their raw (undecoded) attributes and encoding, global attributes and
sub-groups. Readers of each format produce them; the backend and the multi-file planner
consume them without touching the file again.

:func:`describe` caches descriptions per process, keyed by (canonical path, file
identity, library, group): a file already described is not walked again, even after its
handle was evicted, until it changes on disk. Behind it, :mod:`xrdist.persist` keeps them
on disk, so a new process does not walk the file either.

Notes
-----
Descriptions are immutable by convention (never mutate ``attrs``/``encoding``; copy
them) and picklable. The cache is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zict

from xrdist.identity import FileIdentity

#: Descriptions kept per process (they are small: names, shapes, attributes).
DESCRIPTION_CACHE_SIZE = 8192

#: Variables up to this many bytes have their raw values read during the walk (the
#: coordinates, bounds and scalars), so that indexes, stacking checks and the
#: concatenated coordinates of a multi-file stack never reopen the file.
SMALL_VARIABLE_BYTES = 64 * 1024


@dataclass(frozen=True)
class VariableDescription:
    """One variable as stored: dims, shape, dtype, raw attributes and encoding."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any] = field(default_factory=dict)
    encoding: dict[str, Any] = field(default_factory=dict)
    #: Raw (undecoded) values of a small variable, read during the walk; else None.
    values: np.ndarray | None = field(default=None, compare=False)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def chunks(self) -> tuple[int, ...] | None:
        """On-disk chunk shape, or None when contiguous or unknown."""
        return self.encoding.get("chunksizes")

    @property
    def compression(self) -> str | None:
        """The compressor's name (``"zlib"``, ``"zstd"``, ``"deflate"``...), or None."""
        if self.encoding.get("compression"):  # TIFF: the codec's name
            return str(self.encoding["compression"])
        for name in ("zlib", "zstd", "blosc", "bzip2", "szip"):  # netCDF-4 encodings
            if self.encoding.get(name):
                return name
        return None


@dataclass(frozen=True)
class FileDescription:
    """One file (or one group of it) as stored."""

    path: str
    identity: FileIdentity
    library: str
    group: str | None
    file_format: str
    dims: dict[str, int]
    unlimited_dims: frozenset[str]
    attrs: dict[str, Any]
    variables: dict[str, VariableDescription]
    groups: tuple[str, ...] = ()


_cache: zict.LRU[tuple[Any, ...], FileDescription] = zict.LRU(DESCRIPTION_CACHE_SIZE, {})
_cache_lock = threading.Lock()
_walks = [0]
_loads = [0]


def cached(path: str, library: str, group: str | None) -> FileDescription | None:
    """The description of ``path`` from memory or from disk, or None: never walks."""
    from xrdist import persist

    key = (path, FileIdentity.of(path), library, group)
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        found = persist.load(key)
        if found is not None:
            with _cache_lock:
                _loads[0] += 1
                _cache[key] = found
    return found


def describe(
    path: str,
    library: str,
    group: str | None,
    walk: Callable[[], FileDescription],
) -> FileDescription:
    """The cached description of ``path`` for ``library``/``group``, or ``walk()``'s.

    ``walk`` opens (or leases) the file and walks it; it runs only when the file is not
    described yet or changed on disk since (by :class:`~xrdist.identity.FileIdentity`).
    """
    from xrdist import persist

    found = cached(path, library, group)
    if found is not None:
        return found
    description = walk()
    key = (path, description.identity, library, group)
    with _cache_lock:
        _walks[0] += 1
        _cache[key] = description
    persist.store(key, description)
    return description


def description_cache_info() -> dict[str, int]:
    """How many descriptions are cached in memory, how many files were walked, how many
    descriptions were loaded from the disk cache instead, and how many single-file opens
    found their whole decoded dataset there (``datasets_loaded``)."""
    from xrdist import persist

    with _cache_lock:
        return {
            "cached": len(_cache),
            "walks": _walks[0],
            "loaded": _loads[0],
            "datasets_loaded": persist.loaded[persist.DATASET],
        }


def clear_descriptions(disk: bool = True) -> None:
    """Forget every cached description, in memory and (``disk=True``) on disk: the next
    open walks the file again."""
    from xrdist import persist

    with _cache_lock:
        _cache.clear()
    if disk:
        persist.clear()
