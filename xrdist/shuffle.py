"""HDF5's byte shuffle undone with numpy, for one chunk or for many at once.

HDF5's shuffle filter stores byte ``b`` of every element of a chunk in plane ``b``, so
that deflate finds runs of similar bytes. :func:`unshuffle` undoes it for one chunk;
:class:`UnshuffleBatch` stages the inflated bytes of many chunks (a stack window reads
one small chunk from each of many files) and undoes it for all of them in the same
numpy calls, then writes each chunk where its values go.

Notes
-----
Functions are pure and thread-safe. An :class:`UnshuffleBatch` is used by one thread;
its staging bytes are that thread's own (kept between its batches). Nothing here is
picklable in a useful way, nor needs to be.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

_LITTLE_ENDIAN = sys.byteorder == "little"
#: Element sizes unshuffled by shifts, and the unsigned type that holds one element.
_WHOLE_ELEMENT = {2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}


def unshuffle(data: Any, itemsize: int) -> np.ndarray:
    """Undo HDF5's byte shuffle: byte ``b`` of every element is stored in plane ``b``,
    with any bytes past the last whole element left as they are (a new array of bytes)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    n = raw.size // itemsize
    if itemsize == 1 or n == 0:
        return raw
    elements = unshuffle_planes(raw[: n * itemsize].reshape(itemsize, n))
    if n * itemsize == raw.size:
        return elements.reshape(-1)
    return np.concatenate([elements.reshape(-1), raw[n * itemsize :]])


def unshuffle_planes(planes: np.ndarray) -> np.ndarray:
    """Shuffled bytes ``planes`` of shape ``(..., itemsize, n)`` (``uint8``), plane ``b``
    holding byte ``b`` of each of ``n`` elements, as the elements' bytes in order: a new
    ``uint8`` array of shape ``(..., n * itemsize)``. Leading axes are chunks unshuffled
    together, in the same numpy calls.

    2- and 4-byte elements are assembled with shifts and ors of whole planes on a
    little-endian machine (about 3x and 1.5x faster than copying each plane into every
    ``itemsize``-th byte), in as few numpy calls as that takes. Other sizes take one
    strided copy per plane. Every step runs without the GIL (numcodecs' C shuffle holds
    it, so threads decoding chunks took turns at it); each numpy call still lets the GIL
    go and takes it back, which is why many chunks share each call
    (:class:`UnshuffleBatch`)."""
    itemsize, n = planes.shape[-2:]
    lead = planes.shape[:-2]
    wide = _WHOLE_ELEMENT.get(itemsize) if _LITTLE_ENDIAN else None
    if wide is not None:
        byte = wide.type(8)  # a scalar of out's type: numpy converts a Python int each call
        top = planes[..., itemsize - 1, :]
        out = np.left_shift(top, byte, dtype=wide)  # widened as shifted
        np.bitwise_or(out, planes[..., itemsize - 2, :], out=out)
        for plane in range(itemsize - 3, -1, -1):
            np.left_shift(out, byte, out=out)
            np.bitwise_or(out, planes[..., plane, :], out=out)
        return out.view(np.uint8).reshape(*lead, n * itemsize)
    out = np.empty((*lead, n, itemsize), dtype=np.uint8)
    for plane in range(itemsize):
        out[..., plane] = planes[..., plane, :]
    return out.reshape(*lead, n * itemsize)


#: About the most bytes of shuffled chunks an :class:`UnshuffleBatch` holds before it
#: unshuffles them (a larger chunk is staged alone): enough chunks to share each numpy
#: call, few enough to stay in a core's cache until they are written out (4 or 8
#: chunks of 256 x 256 2-byte values were fastest, 120 of them much slower). Unshuffling
#: makes an array of the same size.
UNSHUFFLE_BATCH_BYTES = 2**20


#: The largest staging bytes a thread keeps between batches (chunks larger than this
#: are staged in bytes of their own, one chunk at a time).
_KEPT_STAGING_BYTES = 4 * UNSHUFFLE_BATCH_BYTES

# Each thread's spare staging bytes, between its batches (for the thread's lifetime).
_spare_staging = threading.local()


class UnshuffleBatch:
    """Chunks inflated but still byte-shuffled, unshuffled together, then written where
    their values go.

    Reading a stack's window decodes one small chunk from each of many files. Undoing
    each chunk's shuffle on its own takes two numpy calls of a few microseconds each,
    and every call lets the GIL go and takes it back: two reader threads then spend
    their time handing the GIL to each other (the unshuffle alone ran no faster on two
    threads than on one). A batch stages the inflated bytes of up to
    :data:`UNSHUFFLE_BATCH_BYTES` of chunks laid out alike, and unshuffles them in the
    same calls when it is full, when a chunk laid out otherwise comes, or at
    :meth:`flush`: the caller's output is complete only after ``flush``.

    The staging bytes are the thread's own, lent to one batch at a time and kept for
    the thread's next batch when this one closes (``with UnshuffleBatch() as batch``):
    a fresh megabyte for every group of files made reads in worker threads 10% slower,
    as the allocator gave its pages back to the system and took them again each time.
    A batch opened while another is open in the same thread stages in bytes of its own.

    Not thread-safe: one batch per thread (per group of files a thread reads). Not
    picklable.
    """

    def __init__(self, limit: int | None = None) -> None:
        self._limit = UNSHUFFLE_BATCH_BYTES if limit is None else limit
        self._bytes: np.ndarray | None = None  # borrowed staging bytes
        self._staged: np.ndarray | None = None  # a view of them: one chunk per row
        self._layout: tuple[np.dtype, tuple[int, ...]] | None = None
        self._places: list[tuple[np.ndarray, tuple[slice, ...]]] = []

    def __enter__(self) -> UnshuffleBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stage(self, dtype: np.dtype, chunks: tuple[int, ...]) -> np.ndarray:
        """A writable ``uint8`` row for the shuffled bytes of one chunk of ``dtype`` and
        shape ``chunks``; it counts only once :meth:`place` says where it goes."""
        layout = (dtype, chunks)
        if layout != self._layout or (
            self._staged is not None and len(self._places) == len(self._staged)
        ):
            self.flush()
        if layout != self._layout:
            nbytes = math.prod(chunks) * dtype.itemsize
            rows = max(1, self._limit // nbytes)
            if self._bytes is None or self._bytes.size < rows * nbytes:
                self._give_back()
                self._bytes = borrow_staging(max(self._limit, nbytes))
            self._staged = self._bytes[: rows * nbytes].reshape(rows, nbytes)
            self._layout = layout
        assert self._staged is not None
        return self._staged[len(self._places)]

    def place(self, out: np.ndarray, within: tuple[slice, ...]) -> None:
        """The chunk last staged goes to ``out`` (any dtype: numpy's unsafe cast), its
        part ``within`` (slices of the chunk)."""
        self._places.append((out, within))

    def flush(self) -> None:
        """Unshuffle the staged chunks and write each where it goes."""
        if not self._places:
            return
        assert self._staged is not None and self._layout is not None
        dtype, chunks = self._layout
        count = len(self._places)
        planes = self._staged[:count].reshape(count, dtype.itemsize, -1)
        values = unshuffle_planes(planes).view(dtype).reshape(count, *chunks)
        for chunk, (out, within) in zip(values, self._places, strict=True):
            np.copyto(out, chunk[within], casting="unsafe")
        self._places.clear()

    def close(self) -> None:
        """Drop what is staged and not flushed; lend the staging bytes to the thread's
        next batch."""
        self._places.clear()
        self._staged = self._layout = None
        self._give_back()

    def _give_back(self) -> None:
        if self._bytes is not None:
            return_staging(self._bytes)
        self._bytes = None


def borrow_staging(nbytes: int) -> np.ndarray:
    """At least ``nbytes`` of staging bytes (``uint8``): the thread's spare ones if large
    enough. Give them back with :func:`return_staging` when done."""
    spare = getattr(_spare_staging, "bytes", None)
    if spare is not None and spare.size >= nbytes:
        _spare_staging.bytes = None
        return spare
    return np.empty(nbytes, np.uint8)


def return_staging(staging: np.ndarray) -> None:
    """Keep ``staging`` (from :func:`borrow_staging`) as the thread's spare bytes, unless
    it is larger than :data:`_KEPT_STAGING_BYTES`."""
    if staging.size <= _KEPT_STAGING_BYTES:
        _spare_staging.bytes = staging
