"""The compiled loop of :mod:`xrdist.groupread`: chunks read, inflated and unshuffled
without the GIL.

numba compiles it when this module is imported, or loads it from numba's on-disk cache
(next to this file, else numba's user cache folder): a compile takes about 0.8 s, a load
about 0.2 s. It calls libc's ``pread`` and libdeflate's ``libdeflate_zlib_decompress``
by name, so importing it first loads libdeflate into the process for LLVM (the copy
:mod:`xrdist.groupread` finds); the import raises ``ImportError`` without numba or
libdeflate. :mod:`xrdist.groupread` imports it at the first read that uses it.

Notes
-----
The functions are thread-safe given a decompressor per thread (libdeflate's are not
shared). Nothing here is picklable.
"""

from __future__ import annotations

import llvmlite.binding
import numba
from numba import types

from xrdist.groupread import _READ, _SHORT, _UNDECODABLE, _find_libdeflate

#: The libdeflate shared library the loop calls (and whose decompressors it is given).
LIBDEFLATE = _find_libdeflate()
if LIBDEFLATE is None:
    raise ImportError("no libdeflate library was found (imagecodecs bundles one)")
llvmlite.binding.load_library_permanently(LIBDEFLATE)  # its functions, for LLVM

#: ``libdeflate_zlib_decompress(decompressor, in, in_nbytes, out, out_nbytes, actual)``:
#: 0 when ``in`` inflates to exactly ``out_nbytes`` bytes (``actual`` NULL).
inflate = types.ExternalFunction(
    "libdeflate_zlib_decompress",
    types.intc(
        types.voidptr, types.voidptr, types.uintp, types.voidptr, types.uintp, types.voidptr
    ),
)
#: ``pread(fd, buffer, count, offset)``: the bytes read, or -1.
pread = types.ExternalFunction(
    "pread", types.intp(types.intc, types.voidptr, types.uintp, types.int64)
)


@numba.njit(nogil=True, cache=True)
def unshuffle(src, dst, itemsize):  # type: ignore[no-untyped-def]
    """HDF5's byte shuffle undone: byte ``b`` of element ``j`` is ``src[b * n + j]``,
    written to ``dst[j * itemsize + b]`` (a constant element size lets LLVM vectorise)."""
    n = src.size // itemsize
    if itemsize == 2:
        for j in range(n):
            dst[2 * j] = src[j]
            dst[2 * j + 1] = src[n + j]
    elif itemsize == 4:
        for j in range(n):
            dst[4 * j] = src[j]
            dst[4 * j + 1] = src[n + j]
            dst[4 * j + 2] = src[2 * n + j]
            dst[4 * j + 3] = src[3 * n + j]
    elif itemsize == 8:
        for j in range(n):
            for b in range(8):
                dst[8 * j + b] = src[b * n + j]
    else:
        for j in range(n):
            for b in range(itemsize):
                dst[j * itemsize + b] = src[b * n + j]


@numba.njit(
    "void(uintp, int32[::1], int64[::1], int64[::1], int64, boolean, "
    "uint8[::1], uint8[::1], uint8[:, ::1], int8[::1])",
    nogil=True,
    cache=True,
)
def read_chunks(decompressor, fds, offsets, sizes, itemsize, shuffled, raw, inflated, rows, status):  # type: ignore[no-untyped-def]
    """For each chunk ``i``: read ``sizes[i]`` bytes at ``offsets[i]`` of ``fds[i]`` into
    ``raw``, inflate them (into ``inflated`` if ``shuffled``, else into ``rows[i]``), and
    unshuffle them into ``rows[i]``; ``status[i]`` says which step failed, if one did."""
    nbytes = rows.shape[1]
    for i in range(fds.size):
        size = sizes[i]
        if pread(fds[i], raw.ctypes.data, size, offsets[i]) != size:
            status[i] = _SHORT
            continue
        target = inflated if shuffled else rows[i]
        if inflate(decompressor, raw.ctypes.data, size, target.ctypes.data, nbytes, 0) != 0:
            status[i] = _UNDECODABLE
            continue
        if shuffled:
            unshuffle(inflated[:nbytes], rows[i], itemsize)
        status[i] = _READ
