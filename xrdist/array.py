"""Lazily indexed arrays over one variable of one file, or of a stack of files.

:class:`FileArray` (one file) and :class:`StackArray` (files that follow each other along
one axis) are the ``BackendArray`` objects of xrdist. Indexing reads only the requested
window: each file read leases the file's handle from the process's handle manager for the
whole of the read, takes the locks its format needs, and refuses to read a file that
changed on disk since it was described.

Notes
-----
Thread-safe: any number of threads may index one array at once. A :class:`StackArray`
read hands the files of its window to the process's reader threads (option
``read_threads``), so one window decodes on every core; each thread reads a group of
consecutive files (:func:`decode_batches`, about :data:`DECODE_BATCH_BYTES` of output)
straight into their slots of the output window (HDF5 chunks unshuffled many at a time,
:class:`~xrdist.shuffle.UnshuffleBatch`), then decodes the group at once, in place
when the decoding allows (else in a buffer of the group's size, so memory in flight is
bounded by :func:`reader_threads` such buffers, and each reading thread keeps about
1 MiB of staging bytes between reads). Picklable: they hold
:class:`~xrdist.proxy.HandleProxy` objects and the variable's name, shape and dtype,
never a handle or data; unpickled in another process they read through that process's
cache.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from dask.system import CPU_COUNT
from xarray.backends import BackendArray
from xarray.core import indexing

from xrdist.decoding import converted_dtype, decode_into
from xrdist.formats import get_format
from xrdist.groupread import ChunkGroup, use_compiled_reads
from xrdist.identity import FileIdentity
from xrdist.options import get_option
from xrdist.proxy import HandleProxy
from xrdist.shuffle import UnshuffleBatch
from xrdist.window import bounding_box


class FileChangedError(OSError):
    """The file changed on disk after it was opened: its description no longer holds."""


#: What native libraries and their Python bindings raise for a damaged file (h5py raises
#: ``KeyError`` and ``RuntimeError`` for a bad checksum, tifffile a ``ValueError``...).
#: Other exceptions (``TypeError``, ``AttributeError``...) are bugs and pass unchanged.
LIBRARY_ERRORS = (OSError, ValueError, LookupError, RuntimeError, EOFError)


def naming_path(error: Exception, what: str) -> Exception:
    """An exception whose message names the file, for an ``error`` whose message does
    not: ``"<what>: <type>: <message>"``, a ``ValueError`` for a ``ValueError`` and an
    ``OSError`` otherwise. Raise it ``from error`` (and re-raise an error that already
    names the file with a bare ``raise``: ``raise error from error`` would make its
    cause itself, a cycle that hangs dask.distributed's error reporting)."""
    kind = ValueError if isinstance(error, ValueError) else OSError
    return kind(f"{what}: {type(error).__name__}: {error}")


def read_window(
    proxy: HandleProxy,
    library: str,
    group: str | None,
    name: str,
    identity: FileIdentity,
    key: tuple[Any, ...],
    box: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """``name[key]`` (outer indexing) from one file, under a lease; raises
    :class:`FileChangedError` if the file is not the one that was described, or if it
    was modified in place while the window was being read (a torn read).

    A variable read by byte ranges whose index the handle already holds (the format's
    ``byte_range_reader``) is read first and checked after, with one ``stat``: the read
    calls no native library, so a handle gone stale since it was cached yields at worst
    wrong bytes, and the check sees that the file differs from the one described (or is
    gone, when it cannot tell). Every other read checks the handle before (the lease)
    and the file after: a native library must never read a file through a stale
    handle.

    ``box``, when the caller knows it: the unit-step slices of the file that ``key``
    selects (a stack's window selects the same in all its files), read as they are by
    a byte-range read instead of working them out again from ``key``."""

    def by_bytes(reader: Any) -> np.ndarray:
        return reader(key) if box is None else reader.read_box(box)

    return _leased_read(proxy, library, group, name, identity, key, by_bytes, lambda data: data)


def read_window_into(
    proxy: HandleProxy,
    library: str,
    group: str | None,
    name: str,
    identity: FileIdentity,
    box: tuple[slice, ...],
    out: np.ndarray,
    batch: UnshuffleBatch | ChunkGroup | None = None,
) -> np.dtype:
    """:func:`read_window` of the unit-step ``box``, written into ``out`` (the box's
    shape, any dtype: numpy's unsafe cast) instead of returned; returns the values'
    stored dtype. A byte-range read of HDF5 chunks may leave chunks to ``batch``:
    ``out`` is then complete after ``batch.flush()``. An :class:`UnshuffleBatch` works
    only on bytes already read and checked. A :class:`~xrdist.groupread.ChunkGroup`
    reads them later: it is handed the lease, which keeps the file open until then, and
    the check of the file, which it makes after reading them. The same leases and
    checks as :func:`read_window`."""

    def write(data: np.ndarray) -> np.dtype:
        np.copyto(out, data, casting="unsafe")
        return data.dtype

    def by_bytes(reader: Any) -> np.dtype:
        return reader.read_box_into(box, out, batch)

    later = batch if type(batch) is ChunkGroup else None
    return _leased_read(proxy, library, group, name, identity, box, by_bytes, write, later)


def _leased_read(
    proxy: HandleProxy,
    library: str,
    group: str | None,
    name: str,
    identity: FileIdentity,
    key: tuple[Any, ...],
    by_bytes: Callable[[Any], Any],
    deliver: Callable[[np.ndarray], Any],
    later: ChunkGroup | None = None,
) -> Any:
    """The read of :func:`read_window`: ``by_bytes(reader)`` through the format's
    byte-range reader, else the library's ``name[key]`` given to ``deliver``. Chunks
    that ``by_bytes`` left to be read ``later`` get the lease and the check after."""
    fmt = get_format(library)
    byte_range_reader = getattr(fmt, "byte_range_reader", None)
    lease = proxy.lease(verify=byte_range_reader is None)
    with lease as handle:
        opened_on = lease.identity
        stale = False
        if byte_range_reader is not None:
            reader = None
            if opened_on is None or opened_on == identity:
                reader = byte_range_reader(handle, group, name)
            if reader is not None:
                result = _read(
                    lambda: by_bytes(reader), proxy.path, name, identity, key, _check_unchanged
                )
                if later is not None and later.unheld():
                    later.hold(
                        lease.hand_over(), lambda: _check_unchanged(proxy.path, identity, name)
                    )
                else:
                    _check_unchanged(proxy.path, identity, name)
                return result
            stale = not lease.opened and not lease.verify()  # a stale handle is retired
        if not stale:
            if opened_on is not None and opened_on != identity:
                raise FileChangedError(
                    f"{proxy.path!r} {identity.describe_change(opened_on)} after it was "
                    f"opened; variable {name!r} cannot be read from it safely. Open the "
                    "dataset again."
                )
            data = _read(
                lambda: np.asarray(fmt.read(handle, group, name, key)),
                proxy.path,
                name,
                identity,
                key,
                _check_not_modified,
            )
            _check_not_modified(proxy.path, identity, name)
            return deliver(data)
    # a new handle
    return _leased_read(proxy, library, group, name, identity, key, by_bytes, deliver)


def _read(
    read: Callable[[], Any],
    path: str,
    name: str,
    identity: FileIdentity,
    key: tuple[Any, ...],
    check: Callable[[str, FileIdentity, str], None],
) -> Any:
    """``read()`` with errors that name the file and variable; a library error on a
    file that ``check`` finds changed is reported as that change."""
    try:
        return read()
    except IndexError as err:
        raise IndexError(f"cannot index variable {name!r} of {path!r} with {key!r}: {err}") from err
    except LIBRARY_ERRORS as err:  # a damaged file: say which file and variable
        try:  # unless it was changed under the read (say that, whatever the library saw)
            check(path, identity, name)
        except FileChangedError as changed:
            raise changed from err
        if path in str(err):
            raise
        raise naming_path(err, f"cannot read variable {name!r} of {path!r}") from err
    except MemoryError as err:
        err.add_note(f"while reading variable {name!r} of {path!r} with {key!r}")
        raise


def _check_unchanged(path: str, identity: FileIdentity, name: str) -> None:
    """After a read through a handle not checked before it: raise if the file on disk is
    not exactly the one described (modified in place or replaced, before or during the
    read), or cannot be checked (deleted, moved, unreadable): the handle may have been
    opened on it before it was rewritten in place and moved away, so its bytes cannot
    be vouched for."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise FileChangedError(
            f"{path!r} cannot be checked after variable {name!r} was read from it "
            f"({err.strerror or err}): it was deleted, moved or made unreadable since it "
            "was opened, so the values read cannot be trusted. Open the dataset again."
        ) from err
    if not identity.matches(st):
        raise FileChangedError(
            f"{path!r} {identity.describe_change(FileIdentity.from_stat(st))} after it was "
            "opened, before or while "
            f"variable {name!r} was being read from it; the values read cannot be trusted. "
            "Open the dataset again."
        )


def _check_not_modified(path: str, identity: FileIdentity, name: str) -> None:
    """After a read: raise if the file was modified in place (same inode, new size or
    modification time), since the bytes read may mix old and new contents. A file
    deleted or replaced by another meanwhile was read whole through the open handle,
    which still reads the original."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if st.st_ino == identity.inode and not identity.matches(st):
        now = FileIdentity.from_stat(st)
        raise FileChangedError(
            f"{path!r} {identity.describe_change(now)} while variable {name!r} was being "
            "read from it; the values read cannot be trusted. Open the dataset again."
        )


class FileArray(BackendArray):
    """One variable of one file, read on demand (outer indexing, via xarray's adapter)."""

    __slots__ = ("dtype", "group", "identity", "library", "name", "proxy", "shape")

    def __init__(
        self,
        proxy: HandleProxy,
        library: str,
        group: str | None,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        identity: FileIdentity,
    ) -> None:
        self.proxy = proxy
        self.library = library
        self.group = group
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.identity = identity

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        return read_window(self.proxy, self.library, self.group, self.name, self.identity, key)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("FileArray", self.proxy.path, self.identity, self.library, self.group, self.name)

    def __repr__(self) -> str:
        return f"FileArray({self.proxy.path!r}, {self.name!r}, shape={self.shape})"


# Successive reads of a stack alternate the direction in which they visit its files, so
# a read starts with the files the previous one used last, still in the handle cache.
_direction = itertools.count()

# The process's pool of reader threads (named "xrdist-read"), made on first use and sized
# by the option read_threads; a forked child makes its own.
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def reader_threads() -> int:
    """How many threads read the files of one window here: the option ``read_threads``,
    or by default the threads of the dask.distributed worker running this task, else
    the CPUs this process may use."""
    chosen = get_option("read_threads")
    if chosen is not None:
        return int(chosen)
    if "distributed" in sys.modules:  # no worker can run here before it is imported
        from distributed import get_worker

        try:
            return max(1, int(get_worker().state.nthreads))
        except ValueError:  # not in a worker's task
            pass
    return CPU_COUNT


def _reader_pool(size: int) -> ThreadPoolExecutor | None:
    """The shared reader pool, with at least ``size`` threads; None when ``size`` is 1.

    The pool only grows: threads of one process may want different sizes (the tasks of
    a dask.distributed worker, and the process's own threads), and replacing it for each
    would make a pool per call. A replaced pool is not shut down (a call may still be
    submitting to it); its idle threads end once nothing refers to it."""
    global _pool, _pool_size
    if size <= 1:
        return None
    with _pool_lock:
        if _pool is None or _pool_size < size:
            _pool, _pool_size = ThreadPoolExecutor(size, "xrdist-read"), size
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock, _busy, _helping, _calls, _busy_lock, _in_call
    _pool, _pool_lock = None, threading.Lock()
    _busy, _helping, _calls, _busy_lock = 0, 0, [], threading.Lock()
    _in_call = threading.local()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def run_in_readers(function: Any, items: Sequence[Any] | Callable[[int], Sequence[Any]]) -> None:
    """Call ``function(item)`` for every item; the first error propagates once no helper
    is inside an item (an interrupt of the caller's own item rather than an earlier
    error), and the items not started are skipped.

    The caller takes its items one by one, helped by the process's reader threads while
    the calls in progress (each reading in its own thread) and the helpers at work are
    fewer than ``read_threads``: a single task (one output chunk) reads on every core,
    while tasks that already run in parallel (dask's threads) each read alone instead of
    crowding the cores with threads that only take turns at the GIL. A helper takes one
    item at a time, each time from the call with items left that has the fewest
    helpers, and only while there is a core for it: so it makes way for a task that
    dask starts, moves to a call that started later, and comes back when a call ends.
    A call made from inside another (by a reader thread, or by a caller's own items)
    runs inline: a reader waiting for readers could deadlock the pool. The caller
    returns only once no helper is inside one of its items (they write into its
    output); while it waits, its core is left to others.

    ``items`` may be a function of the number of threads that may take them at first
    (the caller and the helpers free now) that returns them, so that work can be split
    to fit: a call that reads alone is better off with few, large items.
    """
    global _busy
    if threading.current_thread().name.startswith("xrdist-read") or getattr(
        _in_call, "active", False
    ):
        for item in items(1) if callable(items) else items:
            function(item)
        return
    size = reader_threads()
    pool = _reader_pool(size)
    with _busy_lock:
        _busy += 1
        spare = max(0, size - _busy - _helping)
    call: _Call | None = None
    _in_call.active = True
    try:
        if callable(items):
            items = items(1 + spare)
        call = _Call(function, items, size)
        if pool is not None:
            with _busy_lock:
                _calls.append(call)
                spare = max(0, size - _busy - _helping)  # again: calls may have ended meanwhile
            for _ in range(min(spare, len(items) - 1)):
                pool.submit(_help)
        call.take_all()
    finally:
        _in_call.active = False
        with _busy_lock:
            _busy -= 1  # this thread reads no more: its core is free while it waits
            if call is not None and pool is not None:
                call.left = 0
                _calls.remove(call)
            wanted = _helpers_wanted()
        shared = pool or _pool  # a read_threads=1 call ending can still free a core
        for _ in range(wanted if shared is not None else 0):
            shared.submit(_help)  # type: ignore[union-attr]
        if call is not None:
            call.wait_for_helpers()
    if call.failed:
        raise call.failed[0]


class _Call:
    """One call of :func:`run_in_readers` in progress: its items, and who is reading
    them. Every field is guarded by ``_busy_lock``."""

    __slots__ = ("failed", "function", "helpers", "left", "queue", "settled", "size")

    def __init__(self, function: Any, items: Sequence[Any], size: int) -> None:
        self.function = function
        self.queue = iter(items)
        self.left = len(items)  # items not taken yet
        self.size = size  # the read_threads of this call: most threads on its items
        self.failed: list[BaseException] = []
        self.helpers = 0  # helper threads inside one of its items now
        self.settled = threading.Condition(_busy_lock)  # notified when helpers drops to 0

    def take(self) -> Any:
        """Under the lock: the next item, or ``_DONE`` (none left, or one failed)."""
        if self.failed or not self.left:
            return _DONE
        self.left -= 1
        return next(self.queue)

    def take_all(self) -> None:
        """In the calling thread: take items until none is left or one failed. An
        error is recorded (the first one is raised once the helpers are out); an
        interrupt (not an ``Exception``) propagates at once."""
        while True:
            with _busy_lock:
                item = self.take()
            if item is _DONE:
                return
            try:
                self.function(item)
            except BaseException as err:
                with _busy_lock:
                    self.failed.append(err)
                if not isinstance(err, Exception):
                    raise
                return

    def wait_for_helpers(self) -> None:
        """Until no helper is inside one of this call's items (no item is taken once
        ``left`` is 0)."""
        with self.settled:
            while self.helpers:
                self.settled.wait()


def _helpers_wanted() -> int:
    """Under the lock: how many more helpers the calls in progress could use now, each
    call's ``read_threads`` bounding the threads at work while it has items left."""
    live = [c for c in _calls if c.left and not c.failed]
    if not live:
        return 0
    free = max(c.size for c in live) - _busy - _helping
    return max(0, min(free, sum(c.left for c in live)))


def _help() -> None:
    """A reader thread's turn: take one item at a time from the call with items left
    that has the fewest helpers, while the calls in progress and the helpers at work
    leave a core for it (``read_threads`` of that call); then return to the pool."""
    global _helping
    while True:
        with _busy_lock:
            calls = [c for c in _calls if c.left and not c.failed and _busy + _helping < c.size]
            if not calls:
                return
            call = min(calls, key=lambda c: c.helpers)
            item = call.take()
            call.helpers += 1
            _helping += 1
        try:
            call.function(item)
        except BaseException as err:
            with _busy_lock:
                call.failed.append(err)
        finally:
            with _busy_lock:
                _helping -= 1
                call.helpers -= 1
                if not call.helpers:
                    call.settled.notify_all()


# Calls of run_in_readers in progress whose caller is reading (not waiting for helpers).
_busy = 0
# Reader threads inside an item of one of those calls now.
_helping = 0
# The calls in progress that reader threads may help.
_calls: list[_Call] = []
_busy_lock = threading.Lock()
# Whether this thread is inside a call of run_in_readers (a nested call runs inline).
_in_call = threading.local()
_DONE = object()


def _axis_length(key: Any, n: int) -> int | None:
    """Length of an outer-indexing key along an axis of length ``n`` (None: dropped)."""
    if isinstance(key, slice):
        return len(range(*key.indices(n)))
    if isinstance(key, int | np.integer):
        return None
    return len(key)


def _local_key(local: np.ndarray) -> slice | np.ndarray:
    """A slice when the local indices are a regular increasing run, else the array."""
    if len(local) == 1:
        return slice(int(local[0]), int(local[0]) + 1)
    step = int(local[1] - local[0])
    if step > 0 and np.all(np.diff(local) == step):
        return slice(int(local[0]), int(local[-1]) + 1, step)
    return local


def _along(ndim: int, axis: int, lo: int, hi: int) -> tuple[slice, ...]:
    """The key of positions ``lo:hi`` along ``axis`` of an ``ndim``-dimensional array."""
    return (slice(None),) * axis + (slice(lo, hi),) + (slice(None),) * (ndim - axis - 1)


#: About the most output bytes a reader thread decodes at once. The parts of
#: consecutive files are decoded together: xarray's masking and scaling are a handful
#: of ufunc calls, and each one hands the GIL to the other reader threads, so made
#: once per file they cost more in hand-overs than in arithmetic. Made once per
#: window they run on a window larger than the cache (a 120-date window of 256 x 256
#: float32 is 30 MiB, of 512 x 512 120 MiB) and with boolean temporaries as large: a
#: few megabytes at a time stay in the cache between reading and decoding, and read
#: the 120-date stack 4 to 8% faster on one thread than one group per window did.
DECODE_BATCH_BYTES = 4 * 2**20


def decode_batches(
    runs: Sequence[tuple[int, int]], position_bytes: int, budget: int, least: int
) -> list[list[tuple[int, int]]]:
    """Consecutive ``runs`` (``(lo, hi)`` positions, one file each, in order) grouped for
    reading and decoding together: each group spans at most ``budget`` bytes of output
    at ``position_bytes`` per position (a longer run is a group alone), and there are
    at least ``least`` groups when there are that many runs, so every reader thread
    has work. Pure."""
    if not runs:
        return []
    most_runs = max(1, -(-len(runs) // max(1, least)))
    groups: list[list[tuple[int, int]]] = [[runs[0]]]
    size = (runs[0][1] - runs[0][0]) * position_bytes
    for run in runs[1:]:
        more = (run[1] - run[0]) * position_bytes
        if len(groups[-1]) >= most_runs or size + more > budget:
            groups.append([run])
            size = more
        else:
            groups[-1].append(run)
            size += more
    return groups


class StackArray(BackendArray):
    """One variable over files that follow each other along ``concat_axis``.

    ``starts`` are the files' first positions along that axis (plus the total at the end).
    If ``in_files`` is False the files do not have the axis: each file's variable is
    repeated along its extent (xarray's ``data_vars="all"`` concatenation).
    ``decode`` are elementwise functions applied, in order, to each file's part of a
    window as soon as it is read (see :mod:`xrdist.decoding`); ``dtype`` is then the
    decoded dtype.
    """

    __slots__ = (
        "concat_axis",
        "decode",
        "dtype",
        "group",
        "identities",
        "in_files",
        "library",
        "name",
        "proxies",
        "shape",
        "starts",
        "stored_dtype",
    )

    def __init__(
        self,
        proxies: Sequence[HandleProxy],
        identities: Sequence[FileIdentity],
        library: str,
        group: str | None,
        name: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        concat_axis: int,
        starts: Sequence[int],
        in_files: bool = True,
        decode: tuple[Callable[[np.ndarray], np.ndarray], ...] = (),
        stored_dtype: np.dtype | None = None,
    ) -> None:
        self.proxies = tuple(proxies)
        self.identities = tuple(identities)
        self.library = library
        self.group = group
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.concat_axis = concat_axis
        self.starts = np.asarray(starts, dtype=np.int64)
        self.in_files = in_files
        self.decode = decode
        #: The dtype of the values as stored, before ``decode``.
        self.stored_dtype = np.dtype(dtype if stored_dtype is None else stored_dtype)

    def with_decoding(
        self, functions: tuple[Callable[[np.ndarray], np.ndarray], ...], dtype: np.dtype
    ) -> StackArray:
        """The same files, each part read decoded by ``functions`` into ``dtype``."""
        return self._reading(dtype, self.decode + functions)

    def undecoded(self) -> StackArray:
        """The same files, read as stored: no decoding, ``stored_dtype``."""
        return self._reading(self.stored_dtype, ())

    def _reading(
        self, dtype: np.dtype, decode: tuple[Callable[[np.ndarray], np.ndarray], ...]
    ) -> StackArray:
        return StackArray(
            self.proxies,
            self.identities,
            self.library,
            self.group,
            self.name,
            self.shape,
            dtype,
            self.concat_axis,
            self.starts,
            self.in_files,
            decode,
            self.stored_dtype,
        )

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        axis = self.concat_axis
        along = key[axis]
        dropped = isinstance(along, int | np.integer)
        positions = np.arange(self.shape[axis])[along]
        positions = np.atleast_1d(positions)
        lengths = [_axis_length(k, n) for k, n in zip(key, self.shape, strict=True)]
        lengths[axis] = len(positions)
        out = np.empty([n for n in lengths if n is not None], dtype=self.dtype)
        out_axis = sum(1 for n in lengths[:axis] if n is not None)
        if not len(positions):  # nothing along the files' axis (an empty selection)
            return out
        files = np.searchsorted(self.starts, positions, side="right") - 1
        runs = np.flatnonzero(np.diff(files)) + 1
        bounds = list(zip(np.r_[0, runs].tolist(), np.r_[runs, len(files)].tolist(), strict=True))
        position_bytes = out.nbytes // max(1, len(positions))
        backwards = bool(next(_direction) % 2)

        def groups(readers: int) -> list[list[tuple[int, int]]]:
            least = 1 if readers == 1 else 4 * readers  # a lone reader: by size only
            found = decode_batches(bounds, position_bytes, DECODE_BATCH_BYTES, least)
            return found[::-1] if backwards else found

        file_of = files.tolist()  # Python ints: no numpy scalars per file read below
        start_of = self.starts.tolist()
        position_of = positions.tolist()
        # The box of the other axes, the same in every file, when the key is unit-step
        # slices there (as dask's chunks are): worked out once, not once per file.
        other_box, picks = bounding_box(
            (*key[:axis], *key[axis + 1 :]), (*self.shape[:axis], *self.shape[axis + 1 :])
        )
        boxes = not picks

        # Each file's part written straight into its slot of the window (or of the
        # group's buffer), HDF5 chunks unshuffled many at a time: when the key is
        # unit-step slices, for formats read by byte ranges, numeric values.
        into_slots = (
            boxes
            and self.in_files
            and self.stored_dtype.kind in "biuf"
            and hasattr(get_format(self.library), "byte_range_reader")
        )

        # HDF5 chunks read by a compiled loop, a group of files at a time, each file's
        # handle held open until then: at most a reader thread's share of the cache.
        grouped = into_slots and use_compiled_reads(out.nbytes)
        most_files = max(1, get_option("file_cache_maxsize") // reader_threads()) if grouped else 0

        def local_run(lo: int, hi: int) -> tuple[int, slice | np.ndarray]:
            """The file of a run of positions, and the run in that file's indices."""
            f = file_of[lo]
            if hi - lo == 1:  # one position (one date per file): its slice
                p = position_of[lo] - start_of[f]
                return f, slice(p, p + 1)
            return f, _local_key(positions[lo:hi] - self.starts[f])

        def file_box(local: slice | np.ndarray) -> tuple[slice, ...] | None:
            """The box a file's run ``local`` reads, when it is a unit-step slice (and the
            key of the other axes is too), else None."""
            if boxes and type(local) is slice and local.step in (None, 1):
                return (*other_box[:axis], local, *other_box[axis:])
            return None

        def read_part(lo: int, hi: int) -> np.ndarray:
            """The raw values of one file's run of positions, shaped like out's slot."""
            if self.in_files:
                f, local = local_run(lo, hi)
                return self._read_raw(f, (*key[:axis], local, *key[axis + 1 :]), file_box(local))
            f = file_of[lo]
            raw = self._read_raw(f, (*key[:axis], *key[axis + 1 :]), other_box if boxes else None)
            return np.expand_dims(raw, out_axis)  # the file's variable, repeated along the run

        def read_part_into(
            lo: int, hi: int, slot: np.ndarray, batch: UnshuffleBatch | ChunkGroup
        ) -> Any:
            """Write one file's run of positions into ``slot`` (complete after
            ``batch.flush()``); returns the values' stored dtype, or None (nothing
            read) if the run is not one unit-step slice of the file."""
            f, local = local_run(lo, hi)
            box = file_box(local)
            if box is None:
                return None
            proxy, identity = self.proxies[f], self.identities[f]
            return read_window_into(
                proxy, self.library, self.group, self.name, identity, box, slot, batch
            )

        def read_group(group: list[tuple[int, int]]) -> None:
            """Read a group of files' parts, then decode them together in place: each
            part is written into its slot of out converted as the first decoding step
            would convert it (else gathered raw in a buffer), its chunks read in one
            compiled call or unshuffled with the group's others (complete at
            ``flush``), then the other steps run once."""
            first, last = group[0][0], group[-1][1]
            target = out[_along(out.ndim, out_axis, first, last)]
            decode = self.decode
            raw_dtype: np.dtype | None = self.stored_dtype if into_slots else None
            buffer = target
            if into_slots and decode and converted_dtype(decode, raw_dtype) != out.dtype:
                buffer = np.empty(target.shape, raw_dtype)
            with ChunkGroup(most_files) if grouped else UnshuffleBatch() as batch:
                for lo, hi in reversed(group) if backwards else group:
                    slot: Any = (  # a plain slice when the files' axis leads (cheaper per file)
                        slice(lo - first, hi - first)
                        if out_axis == 0
                        else _along(out.ndim, out_axis, lo - first, hi - first)
                    )
                    raw = None
                    dtype = read_part_into(lo, hi, buffer[slot], batch) if into_slots else None
                    if dtype is None:
                        raw = read_part(lo, hi)
                        dtype = raw.dtype
                        if raw_dtype is None:
                            raw_dtype = dtype
                            if decode and converted_dtype(decode, dtype) != out.dtype:
                                buffer = np.empty(target.shape, dtype)
                    if dtype != raw_dtype and not np.can_cast(dtype, raw_dtype, casting="equiv"):
                        raise ValueError(
                            f"variable {self.name!r} of {self.proxies[file_of[lo]].path!r} "
                            f"reads as {dtype}, another file of the stack as {raw_dtype}: "
                            "the files changed since the stack was opened; open it again"
                        )
                    if raw is not None:
                        np.copyto(buffer[slot], raw, casting="unsafe")
                batch.flush()
            if decode:
                decode_into(decode, buffer, target)  # in place when buffer is target

        run_in_readers(read_group, groups)  # each group writes its own slice of out
        return out.squeeze(axis=out_axis) if dropped else out

    def _read_raw(
        self, f: int, key: tuple[Any, ...], box: tuple[slice, ...] | None = None
    ) -> np.ndarray:
        return read_window(
            self.proxies[f], self.library, self.group, self.name, self.identities[f], key, box
        )

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (
            "StackArray",
            tuple(p.path for p in self.proxies),
            self.identities,
            self.library,
            self.group,
            self.name,
            self.concat_axis,
            self.in_files,
            self.decode,
        )

    def __repr__(self) -> str:
        return f"StackArray({self.name!r}, {len(self.proxies)} files, shape={self.shape})"
