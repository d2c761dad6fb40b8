"""Deflated HDF5 chunks of many files read and decoded in one compiled call, without the GIL.

A stack's window reads one small chunk from each of many files. Read chunk by chunk in
Python (a positional read, an inflate, an unshuffle), every step lets the GIL go and
takes it back, and the Python around them runs under it: on two cores, two reader
threads spent a sixth of their time waiting for each other. A :class:`ChunkGroup`
collects the chunks that a group of files' reads would decode, then reads, inflates
and unshuffles them all in one call of a loop compiled by numba that holds no GIL
(``os.pread``'s system call and libdeflate, called directly), and writes each where
its values go.

It is used when numba is installed (the ``fast`` extra) and libdeflate is found (the
copy that imagecodecs ships, else the system's), as the option ``compiled_reads``
says: by default once numba is loaded in the process (by numbagg's kernels, say) or it
has read :data:`AUTO_AFTER_BYTES` of stack windows, since loading it (numba's import
and the loop, compiled once and then loaded from numba's cache) costs each process
about 0.3 s and 100 MiB of memory;
:func:`compiled_reads_unavailable` says why it cannot be used.
Chunks stored with deflate, or deflate then shuffle, with every filter applied, take
this path; any other chunk is read as before.

Notes
-----
A :class:`ChunkGroup` is used by one thread (one per group of files a reader thread
reads) and is not picklable. The compiled loop is thread-safe: each thread has its
own libdeflate decompressor and scratch bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import math
import os
import sys
import tempfile
import threading
import weakref
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from xrdist.options import get_option
from xrdist.shuffle import borrow_staging, return_staging

#: A group reads its chunks once its files reach this many (or at ``flush``): each
#: file's handle is held open (leased) from its read until then, beyond the handle
#: cache's bound when the cache is full.
GROUP_FILES = 8

#: ... or once its chunks reach this many bytes decoded (checked after each file: a
#: file whose part of the window is larger is read with its chunks alone): enough to
#: make one call of many chunks, few enough to stay in a core's cache until they are
#: written where they go.
GROUP_BYTES = 2 * 2**20

# Status of each chunk after the compiled call.
_READ, _SHORT, _UNDECODABLE = 0, 1, 2


class Layout(NamedTuple):
    """How the chunks of one variable are stored: values of ``dtype`` (in the file's
    byte order) in chunks of shape ``chunks``, deflated, byte-shuffled first if
    ``shuffled``."""

    dtype: np.dtype
    chunks: tuple[int, ...]
    shuffled: bool

    @property
    def nbytes(self) -> int:
        return math.prod(self.chunks) * self.dtype.itemsize


class _Chunk(NamedTuple):
    """One chunk to read: ``size`` bytes at ``offset`` of the file ``fd``, whose part
    ``within`` goes to ``out``; ``retry()`` reads it in Python (it raises the error that
    names the file, variable and chunk)."""

    fd: int
    offset: int
    size: int
    layout: Layout
    out: np.ndarray
    within: tuple[slice, ...]
    retry: Callable[[], np.ndarray]


class ChunkGroup:
    """Chunks of a group of files, read, inflated and unshuffled in one compiled call,
    then written where their values go.

    A file's read :meth:`add`\\ s its chunks, then hands its lease (the handle stays
    open) and the check to make after its read to :meth:`hold`. The group reads its
    chunks once it holds ``most_files`` files (at most :data:`GROUP_FILES`) or
    :data:`GROUP_BYTES` of chunks, and at :meth:`flush`; then it checks each file
    (raising what the check raises) and ends the leases. The caller's output is
    complete only after ``flush``.

    A chunk that does not read whole or does not inflate is read again by its
    ``retry``: after its file's check, so that a file changed under the read is
    reported as such, and otherwise with the error that names the chunk.

    Not thread-safe: one group per thread. Not picklable. Use it as a context manager:
    leaving the block ends every lease, reading nothing more if an error left chunks.
    """

    def __init__(self, most_files: int = GROUP_FILES) -> None:
        self._kernel = _loaded_kernel()
        if self._kernel is None:
            raise RuntimeError(f"compiled reads are unavailable: {compiled_reads_unavailable()}")
        self._most_files = max(1, min(GROUP_FILES, most_files))
        self._chunks: list[_Chunk] = []
        self._bytes = 0
        # Files whose chunks are in _chunks: their lease, their check, and the end of
        # their chunks in _chunks.
        self._held: list[tuple[Any, Callable[[], None], int]] = []

    def __enter__(self) -> ChunkGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """The chunks added and not read yet."""
        return len(self._chunks)

    def add(
        self,
        fd: int,
        offset: int,
        size: int,
        layout: Layout,
        out: np.ndarray,
        within: tuple[slice, ...],
        retry: Callable[[], np.ndarray],
    ) -> None:
        """A chunk to read: ``size`` bytes at ``offset`` of the file ``fd``, stored as
        ``layout``; its part ``within`` is written into ``out`` (any dtype: numpy's
        unsafe cast). ``fd`` must stay open until its file is held (:meth:`hold`).
        Reads nothing: an error of another file's chunks is never raised in this
        file's read."""
        self._chunks.append(_Chunk(fd, offset, size, layout, out, within, retry))
        self._bytes += layout.nbytes

    def unheld(self) -> int:
        """The chunks added since the last :meth:`hold` (or read): the file they come
        from must be held before it closes."""
        return len(self._chunks) - (self._held[-1][2] if self._held else 0)

    def hold(self, lease: Any, check: Callable[[], None]) -> None:
        """The file whose chunks were added since the last ``hold``: ``lease`` keeps
        its handle open (it is ended after the chunks are read), and ``check()`` runs
        after they are read. Reads the group if it is full."""
        self._held.append((lease, check, len(self._chunks)))
        if len(self._held) >= self._most_files or self._bytes >= GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        """Read the chunks added, write their values, check their files, end their
        leases."""
        if not self._held and not self._chunks:
            return
        try:
            failed = self._read_all()
            for i in failed:
                self._retry(i)
            for _, check, _ in self._held:
                check()
        finally:
            self.close()

    def close(self) -> None:
        """End every lease held; chunks not read are dropped."""
        held, self._held = self._held, []
        self._chunks.clear()
        self._bytes = 0
        for lease, _, _ in held:
            lease.__exit__(None, None, None)

    def _read_all(self) -> list[int]:
        """Read the chunks, one compiled call per layout (usually one), and write each
        read whole where it goes; the positions of the others."""
        failed: list[int] = []
        by_layout: dict[Layout, list[int]] = {}
        for i, chunk in enumerate(self._chunks):
            by_layout.setdefault(chunk.layout, []).append(i)
        for layout, positions in by_layout.items():
            chunks = [self._chunks[i] for i in positions]
            staging = borrow_staging(len(chunks) * layout.nbytes)
            try:
                rows = staging[: len(chunks) * layout.nbytes].reshape(len(chunks), -1)
                status = self._kernel.read(chunks, layout, rows)
                values = rows.view(layout.dtype).reshape(len(chunks), *layout.chunks)
                outcome = zip(positions, chunks, values, status.tolist(), strict=True)
                for i, chunk, value, ok in outcome:
                    if ok == _READ:
                        np.copyto(chunk.out, value[chunk.within], casting="unsafe")
                    else:
                        failed.append(i)
            finally:
                return_staging(staging)
        return failed

    def _retry(self, i: int) -> None:
        """Chunk ``i``, which the compiled call could not read, read in Python after its
        file's check."""
        for _, check, end in self._held:
            if i < end:
                check()
                break
        chunk = self._chunks[i]
        np.copyto(chunk.out, chunk.retry()[chunk.within], casting="unsafe")


class _Kernel:
    """The compiled loop (:mod:`xrdist.chunkloop`), with one libdeflate decompressor
    per thread."""

    def __init__(self, libdeflate: ctypes.CDLL, loop: Any) -> None:
        self._alloc = libdeflate.libdeflate_alloc_decompressor
        self._alloc.restype, self._alloc.argtypes = ctypes.c_void_p, []
        self._free = libdeflate.libdeflate_free_decompressor
        self._free.restype, self._free.argtypes = None, [ctypes.c_void_p]
        self._loop = loop  # xrdist.chunkloop.read_chunks
        self._threads = threading.local()

    def read(self, chunks: list[_Chunk], layout: Layout, rows: np.ndarray) -> np.ndarray:
        """Read and decode ``chunks`` into ``rows`` (``uint8``, one row of
        ``layout.nbytes`` each); each chunk's status."""
        state = self._thread_state()
        count = len(chunks)
        fds = np.fromiter((c.fd for c in chunks), np.int32, count)
        offsets = np.fromiter((c.offset for c in chunks), np.int64, count)
        sizes = np.fromiter((c.size for c in chunks), np.int64, count)
        raw = state.scratch("raw", int(sizes.max()))
        inflated = state.scratch("inflated", layout.nbytes if layout.shuffled else 0)
        status = np.empty(count, np.int8)
        itemsize = layout.dtype.itemsize
        self._loop(state.decompressor, fds, offsets, sizes, itemsize, layout.shuffled, raw,
                   inflated, rows, status)  # fmt: skip
        return status

    def _thread_state(self) -> _ThreadState:
        state = getattr(self._threads, "state", None)
        if state is None:
            state = self._threads.state = _ThreadState(self._alloc, self._free)
        return state


class _ThreadState:
    """One thread's libdeflate decompressor (freed when the thread ends) and scratch
    bytes."""

    def __init__(self, alloc: Any, free: Any) -> None:
        self.decompressor = alloc()
        if not self.decompressor:
            raise MemoryError("libdeflate could not allocate a decompressor")
        weakref.finalize(self, free, self.decompressor)
        self._scratch: dict[str, np.ndarray] = {}

    def scratch(self, name: str, nbytes: int) -> np.ndarray:
        kept = self._scratch.get(name)
        if kept is None or kept.size < nbytes:
            kept = self._scratch[name] = np.empty(max(nbytes, 1), np.uint8)
        return kept


def _find_libdeflate() -> str | None:
    """The path of a libdeflate shared library: imagecodecs' own copy (its wheels bundle
    one), else one in this environment's or the system's library folders."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - imagecodecs is a dependency
        folders: list[str] = []
    else:
        here = os.path.dirname(imagecodecs.__file__)
        folders = [os.path.join(here, os.pardir, "imagecodecs.libs"), os.path.join(here, ".dylibs")]
    folders.append(os.path.join(sys.prefix, "lib"))
    for folder in folders:
        found = sorted(glob.glob(os.path.join(folder, "libdeflate*.so*")))
        found += sorted(glob.glob(os.path.join(folder, "libdeflate*.dylib")))
        if found:
            return found[0]
    return ctypes.util.find_library("deflate")


def _self_test(kernel: _Kernel) -> None:
    """Read and decode a known shuffled, deflated chunk through ``kernel`` from a
    temporary file; raise if the values differ (a library that is not what it seems)."""
    values = (np.arange(1000, dtype=np.uint64) * 2654435761 % 2**32).astype("<u4")
    shuffled = values.view(np.uint8).reshape(-1, 4).T.copy()
    stored = zlib.compress(shuffled.tobytes())
    with tempfile.TemporaryFile() as file:
        file.write(b"x" * 7 + stored)
        file.flush()
        layout = Layout(values.dtype, values.shape, True)
        chunk = _Chunk(file.fileno(), 7, len(stored), layout, values, (), lambda: values)
        rows = np.empty((1, layout.nbytes), np.uint8)
        status = kernel.read([chunk], layout, rows)
        if status.tolist() != [_READ] or not np.array_equal(rows[0].view("<u4"), values):
            raise RuntimeError("the compiled loop decoded a known chunk wrongly")


_kernel: _Kernel | None = None
_unavailable: str | None = None
_load_lock = threading.Lock()


def _loaded_kernel() -> _Kernel | None:
    """The process's compiled loop, loaded (and checked) on first use; None if it cannot
    be (see :func:`compiled_reads_unavailable`)."""
    global _kernel, _unavailable
    if _kernel is not None or _unavailable is not None:
        return _kernel
    with _load_lock:
        if _kernel is None and _unavailable is None:
            try:
                _kernel = _load()
            except Exception as err:  # no numba, no libdeflate, a failed compile
                _unavailable = str(err)
    return _kernel


def _load() -> _Kernel:
    if not hasattr(os, "pread"):
        raise RuntimeError("this platform has no pread")
    try:
        import numba  # noqa: F401
    except ImportError:
        raise RuntimeError("numba is not installed (pip install 'xrdist[fast]')") from None
    # Compiles the loop, or loads it from numba's cache; raises if no libdeflate is found.
    from xrdist import chunkloop

    kernel = _Kernel(ctypes.CDLL(chunkloop.LIBDEFLATE), chunkloop.read_chunks)
    _self_test(kernel)
    return kernel


def compiled_reads_unavailable() -> str | None:
    """Why chunks cannot be read by the compiled loop in this process, or None if they
    can (loading it, the first time, takes about 0.3 s, or a second to compile it)."""
    _loaded_kernel()
    return _unavailable


#: With ``compiled_reads="auto"``: the bytes of stack windows this process reads
#: before it loads the compiled loop, unless numba is loaded already. Loading costs
#: about 0.3 s (numba's import and the loop from numba's cache; the first process ever
#: compiles it, about a second) and 100 MiB; on two cores the loop saves about a fifth
#: of a read's time on two threads (0.05 s of 0.30 s for 480 MiB of windows), so it
#: pays for itself after a few GiB, and more cores gain more.
AUTO_AFTER_BYTES = 2**30

_window_bytes = 0  # read by stacks in this process while the loop was not loaded


def use_compiled_reads(window_bytes: int) -> bool:
    """Whether a stack's read of a window of ``window_bytes`` groups its chunks: per
    the option ``compiled_reads``, and if the compiled loop loads (the first time,
    here). Thread-safe; the count of bytes read is approximate under threads."""
    global _window_bytes
    choice = get_option("compiled_reads")
    if choice is False:
        return False
    if choice == "auto" and _kernel is None and _unavailable is None:
        _window_bytes += window_bytes
        if _window_bytes < AUTO_AFTER_BYTES and not _numba_in_use():
            return False
    return _loaded_kernel() is not None


def _numba_in_use() -> bool:
    """Whether numba is loaded in this process already (by numbagg's kernels, say): the
    loop then costs about 8 MiB and 0.15 s to load, which any read wins back."""
    return "numba" in sys.modules
