"""Byte-range reads of HDF5 chunked variables: decoded outside HDF5 and its global lock.

h5py serialises every HDF5 call, decompression included, behind one process-wide lock,
so threads reading compressed netCDF-4 barely help. Here a variable's chunks are located
once (:func:`build_chunk_index`: offset, size and filter mask of every stored chunk, from
h5py's chunk iteration), then read with positional reads (``os.pread`` on the file's
descriptor: no HDF5 call, no lock) and decoded in the reading thread with libdeflate or zlib
and numpy, all of which release the GIL. Unallocated chunks read as the fill value. The
deflated chunks of a stack's window can instead be left to a
:class:`~xrdist.groupread.ChunkGroup`, which reads many in one compiled call.

Contiguous variables (no filters) are read by offset: the window's runs of contiguous
bytes, with runs a few pages apart read together (:class:`ContiguousIndex`). Supported
filters of chunked variables: deflate, shuffle, fletcher32 (verified), bzip2 and, when
numcodecs provides them, zstd and blosc. Anything else (lz4, whose HDF5 framing differs from
numcodecs', szip, scale-offset, n-bit, unknown plugins), compact and external layouts are
read through h5py as before; :func:`unsupported_reason` says why.

Notes
-----
:class:`ChunkIndex` is immutable, thread-safe and picklable. Reading functions are
thread-safe: ``os.pread`` does not move a shared file position.
"""

from __future__ import annotations

import bz2
import functools
import itertools
import math
import os
import zlib
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from xrdist.groupread import ChunkGroup, Layout
from xrdist.shuffle import UnshuffleBatch, unshuffle
from xrdist.window import box_parts

try:  # libdeflate: about twice zlib's speed when the output size is known
    from imagecodecs import deflate_decode as _deflate_decode
except ImportError:  # pragma: no cover - imagecodecs is a dependency
    _deflate_decode = None

# HDF5 filter ids
DEFLATE, SHUFFLE, FLETCHER32 = 1, 2, 3
BZIP2, LZ4, BLOSC, ZSTD = 307, 32004, 32001, 32015
FILTER_NAMES = {
    DEFLATE: "deflate",
    SHUFFLE: "shuffle",
    FLETCHER32: "fletcher32",
    BZIP2: "bzip2",
    LZ4: "lz4",
    BLOSC: "blosc",
    ZSTD: "zstd",
    4: "szip",
    5: "nbit",
    6: "scaleoffset",
}


class CorruptChunkError(OSError):
    """A stored chunk failed to decode or its checksum did not match."""


def _numcodecs_codec(fid: int) -> Any:
    """A numcodecs decoder for plugin filter ``fid``, or None if unavailable."""
    try:
        import numcodecs
    except ImportError:
        return None
    if fid == ZSTD:
        return numcodecs.Zstd()
    if fid == BLOSC:
        return numcodecs.Blosc()
    if fid == LZ4:
        return None  # HDF5's lz4 framing differs from numcodecs.LZ4's
    return None


def _fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 checksum: 16-bit big-endian words summed in blocks of 360 with
    end-around-carry reductions, an odd last byte added on its own (H5checksum.c)."""
    even = len(data) - len(data) % 2
    words = np.frombuffer(data[:even], dtype=">u2").astype(np.uint64)
    sum1 = sum2 = 0
    for start in range(0, words.size, 360):
        block = words[start : start + 360]
        n = block.size
        sum2 += n * sum1 + int(np.sum(block * np.arange(n, 0, -1, dtype=np.uint64)))
        sum1 += int(np.sum(block))
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    if len(data) % 2:
        sum1 += data[-1] << 8
        sum2 += sum1
        sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
        sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    sum1 = (sum1 & 0xFFFF) + (sum1 >> 16)
    sum2 = (sum2 & 0xFFFF) + (sum2 >> 16)
    return (sum2 << 16) | sum1


def _inflate(data: bytes, size: int) -> Any:
    """Deflate-decode ``data`` whose decoded length is ``size``."""
    if _deflate_decode is not None:
        try:
            return _deflate_decode(data, out=size)
        except Exception:  # a size we guessed wrong: the general decoder below
            pass
    return zlib.decompress(data)


@functools.lru_cache(maxsize=256)
def _decoding_steps(
    pipeline: tuple[tuple[int, tuple[int, ...]], ...],
    mask: int,
    chunks: tuple[int, ...],
    itemsize: int,
) -> tuple[tuple[int, int], ...]:
    """The filters that decode a chunk stored with filter ``mask``, in decoding order
    (the reverse of writing, skipping filters the mask says were not applied), each
    with the chunk's size in bytes as it entered that filter when written: the raw
    chunk plus 4 for each active fletcher32 applied before it. Pure; memoized, since
    every chunk of a variable (and of a stack's files) decodes the same way."""
    steps = []
    for position in reversed(range(len(pipeline))):
        if mask & (1 << position):
            continue
        size = math.prod(chunks) * itemsize
        for earlier in range(position):
            if pipeline[earlier][0] == FLETCHER32 and not mask & (1 << earlier):
                size += 4
        steps.append((pipeline[position][0], size))
    return tuple(steps)


@dataclass(frozen=True)
class ChunkIndex:
    """Where each stored chunk of one variable is, and how it was encoded.

    ``offsets``/``sizes``/``masks`` have the chunk grid's shape; an offset of -1 is an
    unallocated chunk. ``pipeline`` is the filter ids and parameters in write order.
    """

    path: str
    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    pipeline: tuple[tuple[int, tuple[int, ...]], ...]
    offsets: np.ndarray
    sizes: np.ndarray
    masks: np.ndarray

    @functools.cached_property
    def _stageable(self) -> bool:
        """Whether chunks stored with every filter (mask 0) can be staged in an
        :class:`UnshuffleBatch`: deflate then shuffle, multi-byte values, libdeflate."""
        steps = _decoding_steps(self.pipeline, 0, self.chunks, self.dtype.itemsize)
        kinds = tuple(fid for fid, _ in steps)
        multibyte = self.dtype.itemsize > 1
        return kinds == (DEFLATE, SHUFFLE) and multibyte and _deflate_decode is not None

    @functools.cached_property
    def _group_layout(self) -> Layout | None:
        """How chunks stored with every filter (mask 0) are read by a
        :class:`~xrdist.groupread.ChunkGroup`: deflated, shuffled first or not; None
        for any other pipeline."""
        steps = _decoding_steps(self.pipeline, 0, self.chunks, self.dtype.itemsize)
        kinds = tuple(fid for fid, _ in steps)
        if kinds not in ((DEFLATE,), (DEFLATE, SHUFFLE)):
            return None
        shuffled = kinds == (DEFLATE, SHUFFLE) and self.dtype.itemsize > 1
        return Layout(self.dtype, self.chunks, shuffled)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks, strict=True))

    def decode(self, raw: bytes, mask: int, where: tuple[int, ...]) -> np.ndarray:
        """One stored chunk's bytes -> its array (full chunk shape)."""
        data = raw
        try:
            for fid, size in _decoding_steps(self.pipeline, mask, self.chunks, self.dtype.itemsize):
                if fid == DEFLATE:
                    data = _inflate(data, size)
                elif fid == SHUFFLE:
                    data = unshuffle(data, self.dtype.itemsize)
                elif fid == FLETCHER32:
                    data = bytes(data)
                    stored = int.from_bytes(data[-4:], "little")
                    data = data[:-4]
                    if _fletcher32(data) != stored:
                        raise CorruptChunkError("fletcher32 checksum mismatch")
                elif fid == BZIP2:
                    data = bz2.decompress(data)
                else:
                    codec = _numcodecs_codec(fid)
                    data = bytes(codec.decode(data))
            array = np.frombuffer(data, dtype=self.dtype)
            return array.reshape(self.chunks)
        except CorruptChunkError as err:
            raise CorruptChunkError(self._where(where, str(err))) from None
        except Exception as err:
            raise CorruptChunkError(self._where(where, f"failed to decode: {err!r}")) from err

    def _where(self, where: tuple[int, ...], what: str) -> str:
        return f"{self.path!r}, variable {self.name!r}, chunk {where}: {what}"

    def read_box(self, fd: int, box: tuple[slice, ...]) -> np.ndarray:
        """The values in ``box`` (unit-step slices), from the chunks it touches; a new,
        writable array, or a writable view of the one chunk that holds the whole box."""
        bounds = tuple((s.start, s.stop) for s in box)
        if any(a >= b for a, b in bounds):
            return np.empty([max(0, b - a) for a, b in bounds], dtype=self.dtype)
        parts = box_parts(bounds, self.chunks)
        if len(parts) == 1:  # one chunk (a tile-aligned window): no copy
            where, within, _ = parts[0]
            chunk = self._chunk(fd, where)[within]
            return chunk if chunk.flags.writeable else chunk.copy()
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        self.read_box_into(fd, box, out)
        return out

    def read_box_into(
        self,
        fd: int,
        box: tuple[slice, ...],
        out: np.ndarray,
        batch: UnshuffleBatch | ChunkGroup | None = None,
    ) -> np.dtype:
        """Write the values in ``box`` (unit-step slices) into ``out`` (the box's shape,
        any dtype: numpy's unsafe cast); returns the values' stored dtype.

        With a ``batch``, chunks stored with deflate then shuffle (an
        :class:`UnshuffleBatch`), or with deflate and maybe shuffle (a
        :class:`~xrdist.groupread.ChunkGroup`, which reads them later through ``fd``),
        are left to it and written into ``out`` when it decodes them: ``out`` is
        complete after ``batch.flush()``. Any other chunk is written at once."""
        bounds = tuple((s.start, s.stop) for s in box)
        if all(a < b for a, b in bounds):
            for where, within, dst in box_parts(bounds, self.chunks):
                if batch is None or not self._stage(fd, where, batch, out[dst], within):
                    np.copyto(out[dst], self._chunk(fd, where)[within], casting="unsafe")
        return self.dtype

    def _stage(
        self,
        fd: int,
        where: tuple[int, ...],
        batch: UnshuffleBatch | ChunkGroup,
        out: np.ndarray,
        within: tuple[slice, ...],
    ) -> bool:
        """Leave the chunk at ``where`` to ``batch``, to be written there into ``out``;
        False (nothing staged) for a chunk not written or not stored with every filter.
        A :class:`~xrdist.groupread.ChunkGroup` takes deflated chunks, to read later
        (and to read again with :meth:`_chunk` if they fail). An
        :class:`UnshuffleBatch` takes chunks stored with exactly deflate then shuffle,
        with values of more than one byte, inflated now with libdeflate to their full
        size; anything amiss (a short read, a failed inflate) is left to
        :meth:`_chunk`, which says what."""
        offset = self.offsets.item(where)
        if offset < 0 or self.masks.item(where):
            return False
        size = self.sizes.item(where)
        if type(batch) is ChunkGroup:
            layout = self._group_layout
            if layout is None:
                return False
            retry = functools.partial(self._chunk_named, fd, where)
            batch.add(fd, offset, size, layout, out, within, retry)
            return True
        if not self._stageable:
            return False
        raw = os.pread(fd, size, offset)
        if len(raw) != size:
            return False
        row = batch.stage(self.dtype, self.chunks)
        try:
            inflated = _deflate_decode(raw, out=row)
        except Exception:
            return False
        if len(inflated) != row.size:
            return False
        if inflated is not row:  # imagecodecs writes into row and returns it; if not, copy
            row[:] = np.frombuffer(inflated, np.uint8)
        batch.place(out, within)
        return True

    def _chunk_named(self, fd: int, where: tuple[int, ...]) -> np.ndarray:
        """:meth:`_chunk`, whose errors all name the file, variable and chunk."""
        try:
            return self._chunk(fd, where)
        except CorruptChunkError:
            raise
        except OSError as err:
            raise CorruptChunkError(self._where(where, f"cannot be read: {err}")) from err

    def _chunk(self, fd: int, where: tuple[int, ...]) -> np.ndarray:
        """The stored chunk at chunk-grid index ``where``, decoded (the fill value if it
        was never written)."""
        offset = int(self.offsets[where])
        if offset < 0:
            return np.full(self.chunks, self.fill_value, dtype=self.dtype)
        size = int(self.sizes[where])
        raw = os.pread(fd, size, offset)
        if len(raw) != size:
            raise CorruptChunkError(
                self._where(where, f"file ends after {len(raw)} of {size} bytes")
            )
        return self.decode(raw, int(self.masks[where]), where)


@dataclass(frozen=True)
class ContiguousIndex:
    """Where one contiguous (unchunked, unfiltered) variable's bytes are: C order from
    ``offset``, or nowhere yet (``offset`` None: never written, reads the fill value)."""

    path: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: Any
    offset: int | None

    def read_box(self, fd: int, box: tuple[slice, ...]) -> np.ndarray:
        """The values in ``box`` (unit-step slices).

        The box is a sequence of runs of contiguous bytes (a row of the box, or several
        whole rows at once). Runs closer than :data:`CONTIGUOUS_MAX_GAP` bytes are read
        with one positional read (the gaps are read and dropped), up to
        :data:`CONTIGUOUS_MAX_READ` bytes at a time: a 256-wide window of a 1024-wide
        image is then one read per file, not one per row, which costs far fewer system
        calls for the same pages of the disk or page cache."""
        out_shape = [s.stop - s.start for s in box]
        if self.offset is None or 0 in out_shape:
            return np.full(out_shape, self.fill_value, dtype=self.dtype)
        if not box:  # a scalar
            return self._pread(fd, 0, 1).reshape(())
        out = np.empty(out_shape, dtype=self.dtype)
        # The run: the last axis the box does not cover whole, with all axes after it.
        axis = len(box) - 1
        while axis > 0 and box[axis].start == 0 and box[axis].stop == self.shape[axis]:
            axis -= 1
        inner = math.prod(self.shape[axis + 1 :])
        count = (box[axis].stop - box[axis].start) * inner
        # Element offset of every run, in file (and so C) order.
        lead = np.ix_(*(np.arange(s.start, s.stop) for s in box[:axis]))
        first = [*lead, box[axis].start, *([0] * (len(box) - axis - 1))]
        starts = np.ravel_multi_index(tuple(np.broadcast_arrays(*first)), self.shape).ravel()
        runs = out.reshape(len(starts), count)
        for lo, hi in _coalesce(starts, count, self.dtype.itemsize):
            span = self._pread(fd, int(starts[lo]), int(starts[hi - 1] - starts[lo]) + count)
            rel = starts[lo:hi] - starts[lo]
            steps = np.diff(rel)
            if hi - lo == 1 or (steps == steps[0]).all():
                step = int(steps[0]) if hi - lo > 1 else count
                runs[lo:hi] = np.lib.stride_tricks.as_strided(
                    span,
                    shape=(hi - lo, count),
                    strides=(step * span.itemsize, span.itemsize),
                    writeable=False,
                )
            else:
                for i, r in enumerate(rel.tolist()):
                    runs[lo + i] = span[r : r + count]
        return out

    def _pread(self, fd: int, start: int, count: int) -> np.ndarray:
        size = count * self.dtype.itemsize
        assert self.offset is not None
        raw = os.pread(fd, size, self.offset + start * self.dtype.itemsize)
        if len(raw) != size:
            raise CorruptChunkError(
                f"{self.path!r}, variable {self.name!r}: file ends after {len(raw)} of "
                f"{size} bytes at element {start} (truncated?)"
            )
        return np.frombuffer(raw, dtype=self.dtype)


#: Runs of a contiguous variable at most this many bytes apart are read at once.
#: Disks and page caches work in pages (and read ahead), so small gaps cost little to
#: read, and far less than a system call per run.
CONTIGUOUS_MAX_GAP = 32 * 1024

#: The longest single read of coalesced runs, bytes (bounds the buffer per read).
CONTIGUOUS_MAX_READ = 16 * 1024 * 1024


def _coalesce(starts: np.ndarray, count: int, itemsize: int) -> list[tuple[int, int]]:
    """Groups ``[lo, hi)`` of the runs starting at ``starts`` (increasing element
    offsets, ``count`` elements each) to read at once: consecutive runs at most
    :data:`CONTIGUOUS_MAX_GAP` bytes apart, spanning at most :data:`CONTIGUOUS_MAX_READ`
    bytes (a single longer run is a group of its own). Pure."""
    gaps = (np.diff(starts) - count) * itemsize
    cuts = [0, *(np.flatnonzero(gaps > CONTIGUOUS_MAX_GAP) + 1).tolist(), len(starts)]
    groups: list[tuple[int, int]] = []
    for lo, hi in itertools.pairwise(cuts):
        while lo < hi:
            span_ends = (starts[lo:hi] - starts[lo] + count) * itemsize
            n = max(1, int(np.searchsorted(span_ends, CONTIGUOUS_MAX_READ, side="right")))
            groups.append((lo, lo + n))
            lo += n
    return groups


def unsupported_reason(dset: Any) -> str | None:
    """Why ``dset`` (an h5py Dataset) cannot be read by byte ranges, or None if it can."""
    if dset.dtype.kind not in "biuf" or dset.dtype.fields is not None:
        return f"dtype {dset.dtype} is read through h5py"
    if dset.file.driver != "sec2":
        return f"the file is opened with the {dset.file.driver!r} driver, not sec2"
    plist = dset.id.get_create_plist()
    if dset.chunks is None:
        if plist.get_layout() != h5py.h5d.CONTIGUOUS:
            return "compact layout (stored in the object header)"
        if plist.get_external_count():
            return "stored in external files"
        return None
    for i in range(plist.get_nfilters()):
        fid = plist.get_filter(i)[0]
        if fid in (DEFLATE, SHUFFLE, FLETCHER32, BZIP2):
            continue
        if _numcodecs_codec(fid) is None:
            name = FILTER_NAMES.get(fid, f"filter {fid}")
            return f"{name} is decoded by HDF5 only"
    return None


def build_chunk_index(dset: Any, path: str, name: str) -> ChunkIndex | ContiguousIndex:
    """Locate every stored chunk of ``dset``, or its one contiguous run of bytes (caller
    holds the HDF5 library lock and checked :func:`unsupported_reason`)."""
    if dset.chunks is None:
        offset = dset.id.get_offset()
        return ContiguousIndex(
            path=path,
            name=name,
            shape=tuple(dset.shape),
            dtype=dset.dtype,
            fill_value=dset.fillvalue,
            offset=None if offset is None else int(offset),
        )
    plist = dset.id.get_create_plist()
    pipeline = tuple(
        (int(f[0]), tuple(int(v) for v in f[2]))
        for f in (plist.get_filter(i) for i in range(plist.get_nfilters()))
    )
    chunks = tuple(dset.chunks)
    grid = tuple(-(-n // c) for n, c in zip(dset.shape, chunks, strict=True))
    offsets = np.full(grid, -1, dtype=np.int64)
    sizes = np.zeros(grid, dtype=np.int64)
    masks = np.zeros(grid, dtype=np.uint32)

    def record(info: Any) -> None:
        where = tuple(o // c for o, c in zip(info.chunk_offset, chunks, strict=True))
        offsets[where] = info.byte_offset
        sizes[where] = info.size
        masks[where] = info.filter_mask

    if dset.id.get_num_chunks():
        dset.id.chunk_iter(record)
    fill = dset.fillvalue
    return ChunkIndex(
        path=path,
        name=name,
        shape=tuple(dset.shape),
        chunks=chunks,
        dtype=dset.dtype,
        fill_value=fill,
        pipeline=pipeline,
        offsets=offsets,
        sizes=sizes,
        masks=masks,
    )
