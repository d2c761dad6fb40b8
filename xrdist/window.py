"""Outer-indexing keys as the box of the file to read and what to pick from it.

Readers that fetch whole chunks or tiles (HDF5 byte ranges, TIFF tiles, h5py selections)
read the unit-step bounding box of a key, then :func:`pick` the requested (strided,
listed or dropped) elements from it in memory. Pure functions; thread-safe.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from xrdist.shuffle import UnshuffleBatch


def bounding_box(
    key: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[tuple[slice, ...], list[Any]]:
    """Unit-step slices that cover an outer-indexing key, and what to pick from them
    (integers keep a length-1 axis in the box and are dropped by :func:`pick`); nothing
    to pick (an empty list) when the key is unit-step slices, as dask's chunks are."""
    box, picks = [], []
    unit = True
    for k, n in zip(key, shape, strict=True):
        if type(k) is slice and k.step in (None, 1):  # the common case, first
            start, stop, _ = k.indices(n)
            box.append(slice(start, max(start, stop)))
            picks.append(slice(None))
        elif isinstance(k, int | np.integer):
            unit = False
            k = int(k) + (n if k < 0 else 0)
            box.append(slice(k, k + 1))
            picks.append(0)
        elif isinstance(k, slice):
            start, stop, step = k.indices(n)
            count = len(range(start, stop, step))
            last = start + (count - 1) * step + 1 if count else start
            box.append(slice(start, last))
            picks.append(slice(None, None, step) if step != 1 else slice(None))
            unit = unit and step == 1
        else:
            unit = False
            k = np.asarray(k)
            lo = int(k.min()) if k.size else 0
            box.append(slice(lo, int(k.max()) + 1 if k.size else 0))
            picks.append(k - lo)
    return tuple(box), [] if unit else picks


def pick(data: np.ndarray, picks: list[Any]) -> np.ndarray:
    """The elements of a bounding box's ``data`` that :func:`bounding_box` said to pick."""
    for axis in reversed(range(len(picks))):
        chosen = picks[axis]
        if isinstance(chosen, slice):
            if chosen != slice(None):
                data = data[(slice(None),) * axis + (chosen,)]
        else:
            data = np.take(data, chosen, axis=axis)
    return data


def chunk_ranges(box: tuple[slice, ...], chunks: tuple[int, ...]) -> list[range]:
    """Per axis, the chunk-grid indices that ``box`` (unit-step slices) touches."""
    return [
        range(s.start // c, max(s.start, s.stop - 1) // c + 1)
        for s, c in zip(box, chunks, strict=True)
    ]


def chunk_part(
    box: tuple[slice, ...], where: tuple[int, ...], chunks: tuple[int, ...]
) -> tuple[slice, ...]:
    """The part of ``box`` inside the chunk at grid index ``where``, in array indices."""
    return tuple(
        slice(max(s.start, i * c), min(s.stop, (i + 1) * c))
        for s, i, c in zip(box, where, chunks, strict=True)
    )


class BoxReader(NamedTuple):
    """Reads one variable of an open file through ``index``, anything with a ``shape``
    and a ``read_box(fd, box)`` that reads a unit-step box from the file descriptor
    ``fd`` (HDF5 chunk indexes, TIFF tile indexes). Thread-safe when the index is; not
    picklable in any useful way (a descriptor is a number of this process)."""

    index: Any
    fd: int

    def __call__(self, key: tuple[Any, ...]) -> np.ndarray:
        """``key`` (outer indexing): its bounding box, then its picks."""
        box, picks = bounding_box(key, self.index.shape)
        return pick(self.index.read_box(self.fd, box), picks)

    def read_box(self, box: tuple[slice, ...]) -> np.ndarray:
        """The values in ``box`` (unit-step slices inside the variable)."""
        return self.index.read_box(self.fd, box)

    def read_box_into(
        self, box: tuple[slice, ...], out: np.ndarray, batch: UnshuffleBatch | None = None
    ) -> np.dtype:
        """Write the values in ``box`` into ``out`` (numpy's unsafe cast); returns their
        stored dtype. An index that can (HDF5 chunks) leaves chunks to ``batch``, an
        :class:`~xrdist.shuffle.UnshuffleBatch`, and ``out`` is complete after its
        ``flush``; any other index reads the box, then writes it."""
        read_into = getattr(self.index, "read_box_into", None)
        if read_into is not None:
            return read_into(self.fd, box, out, batch)
        data = self.index.read_box(self.fd, box)
        np.copyto(out, data, casting="unsafe")
        return data.dtype


@functools.lru_cache(maxsize=1024)
def box_parts(
    bounds: tuple[tuple[int, int], ...], chunks: tuple[int, ...]
) -> tuple[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]], ...]:
    """How to assemble the box ``bounds`` (``(start, stop)`` per axis, non-empty) from
    chunks of shape ``chunks``: for every chunk it touches, in C order, its chunk-grid
    index, the part of the chunk inside the box (in the chunk's own indices) and where
    that part goes (in the box's indices). Pure; memoized, since a window is read with
    the same parts from every file of a stack."""
    box = tuple(slice(a, b) for a, b in bounds)
    parts = []
    for where in itertools.product(*chunk_ranges(box, chunks)):
        part = chunk_part(box, where, chunks)
        within = tuple(
            slice(p.start - i * c, p.stop - i * c)
            for p, i, c in zip(part, where, chunks, strict=True)
        )
        dst = tuple(slice(p.start - a, p.stop - a) for p, (a, _) in zip(part, bounds, strict=True))
        parts.append((where, within, dst))
    return tuple(parts)


def failing_chunk(
    read: Callable[[tuple[slice, ...]], Any],
    box: tuple[slice, ...],
    chunks: tuple[int, ...],
    limit: int = 4096,
) -> tuple[int, ...] | None:
    """After a read of ``box`` failed: read each on-disk chunk it touches on its own and
    return the chunk-grid index of the first that fails, or None (all read, or more than
    ``limit`` chunks to try). For error messages only: it re-reads the window."""
    ranges = chunk_ranges(box, chunks)
    if int(np.prod([len(r) for r in ranges])) > limit:
        return None
    for where in itertools.product(*ranges):
        try:
            read(chunk_part(box, where, chunks))
        except Exception:
            return where
    return None
