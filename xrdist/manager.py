"""The process-wide cache of open file handles, with leases.

A reader asks for a file with a :class:`FileSpec` (how to open it) and holds it with a
lease for the whole of its read::

    with get_manager().lease(spec) as handle:
        data = handle["var"][...]

How it works
------------
* Idle handles (no lease) are kept least recently used first, and evicted oldest
  first while the open handles, leased ones included, exceed ``maxsize``.
* A leased handle is taken *out* of the idle handles, so idle handles are evicted to
  make room for it but a leased handle never is. When its last lease ends it goes back
  as the most recently used. Hence ``open_now <= max(maxsize, leased_now)``: the cache
  exceeds its bound only by handles in use, and :class:`CacheInfo` reports
  ``over_bound``.
* The idle handles are a plain dict in recency order (a handle leased and returned is
  deleted and inserted again, so it moves to the end). ``zict.LRU`` did this job
  before; every call of it takes its own lock and its reinsert raises and catches a
  ``KeyError``, which made a lease cost about 5 us, twice per file read, under the
  manager's lock that every reader thread takes. The manager's lock already guards
  the dict.
* A handle that must go while leased (``close``, ``clear``, a stale file) is *retired*:
  new leases no longer get it and it is closed when its last lease ends (a deferred
  close).
* Opening and closing run outside the manager's lock, so a slow open of one file never
  blocks leases of others. Two threads leasing the same missing key share one open.
* ``mode="w"`` is used for the first open of a key only; every reopen uses ``"a"``, so
  a reopened file is never truncated.
* Staleness: at each lease of a cached handle the file is stat-ed (a few
  microseconds). A file replaced or rewritten since it was opened is reopened; a file
  deleted raises ``FileNotFoundError`` naming it. Data are never read silently from
  a stale handle opened for reading.
* Fork safety: a forked child never uses its parent's handles; it starts empty.

Notes
-----
Thread-safe: every public method of :class:`HandleManager`. A handle itself is only as
thread-safe as its library; readers take the locks of :mod:`xrdist.locks` around calls
into it. Not picklable: managers are per process (send :class:`FileSpec` or a
:class:`~xrdist.proxy.HandleProxy` instead).
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from xrdist.identity import FileIdentity
from xrdist.options import get_option, on_change

#: Marker for "no mode argument", as in xarray's CachingFileManager.
OMIT = "<omitted>"

_WRITE_MODES = frozenset({"w", "a", "r+", "w-", "x", "ws", "as", "r+s"})


@dataclass(frozen=True)
class FileSpec:
    """How to open one file: ``opener(*args, mode=mode, **dict(kwargs))``.

    The cache key is ``(opener, args, mode, kwargs, manager_id)`` with ``"w"`` replaced by
    ``"a"``; ``path`` (for errors and staleness checks), ``lock`` (held around open and
    close) and ``weight`` (the cost of keeping the file open) are not part of the key.
    Picklable when ``opener`` and the arguments are. Immutable, hence thread-safe.
    """

    opener: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    mode: Any = OMIT
    manager_id: Hashable = None
    path: str | None = field(default=None, compare=False)
    lock: Any = field(default=None, compare=False)
    weight: int = field(default=1, compare=False)

    @cached_property
    def key(self) -> tuple[Any, ...]:
        """The cache key (computed once: leases look it up on every read)."""
        mode = "a" if self.mode == "w" else self.mode
        return (self.opener, self.args, mode, self.kwargs, self.manager_id)

    @property
    def writes(self) -> bool:
        return isinstance(self.mode, str) and self.mode in _WRITE_MODES

    def describe(self) -> str:
        """``package.Opener('path', mode='r')``, for messages."""
        package = getattr(self.opener, "__module__", "").split(".")[0]
        name = getattr(self.opener, "__qualname__", repr(self.opener))
        name = f"{package}.{name}" if package and package != "builtins" else name
        target = repr(self.path) if self.path is not None else ", ".join(map(repr, self.args))
        mode = "" if self.mode == OMIT else f", mode={self.mode!r}"
        return f"{name}({target}{mode})"


@dataclass(frozen=True)
class CacheInfo:
    """Statistics of a handle manager: counters since the last reset, and a snapshot."""

    hits: int
    misses: int
    opens: int
    closes: int
    evictions: int
    deferred_closes: int
    stale_reopens: int
    open_errors: int
    open_now: int
    leased_now: int
    peak_open: int
    maxsize: int
    over_bound: int
    weight_now: int
    maxweight: int | None
    pid: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = (
    "hits",
    "misses",
    "opens",
    "closes",
    "evictions",
    "deferred_closes",
    "stale_reopens",
    "open_errors",
)


class _Entry:
    """One open handle and its bookkeeping. Guarded by the manager's lock."""

    __slots__ = ("handle", "identity", "leases", "retired", "spec")

    def __init__(self, spec: FileSpec, handle: Any, identity: FileIdentity | None) -> None:
        self.spec = spec
        self.handle = handle
        self.identity = identity
        self.leases = 0
        self.retired = False


class Lease:
    """Holds one handle open from ``__enter__`` to ``__exit__``; returned by ``lease``.

    ``identity`` is the :class:`~xrdist.identity.FileIdentity` of the file the handle was
    opened on (``None`` when the spec names no path). A lease is used once, by one thread.
    """

    __slots__ = ("_entry", "_manager", "_spec", "_verify", "opened")

    def __init__(self, manager: HandleManager, spec: FileSpec, verify: bool = True) -> None:
        self._manager = manager
        self._spec = spec
        self._verify = verify
        self._entry: _Entry | None = None
        #: True if entering this lease opened the file (a miss), False if it was cached.
        self.opened = False

    def __enter__(self) -> Any:
        if self._entry is not None:
            raise RuntimeError("a Lease is entered once; call lease() again")
        self._entry, self.opened = self._manager._checkout(self._spec, self._verify)
        return self._entry.handle

    def verify(self) -> bool:
        """Inside a lease entered with ``verify=False``: check the file on disk now, as
        entering with ``verify=True`` would have. False if the handle is stale: it is
        then retired (closed when this lease ends) and the next lease opens the file
        anew. Raises ``FileNotFoundError`` if the file was deleted."""
        if self._entry is None:
            raise RuntimeError("Lease.verify() is called inside the with block")
        return self._manager._is_fresh(self._entry, held=True, hit=not self.opened)

    def __exit__(self, *exc: object) -> None:
        entry, self._entry = self._entry, None
        if entry is not None:
            self._manager._checkin(entry)

    def hand_over(self) -> Lease:
        """Inside the ``with`` block: a lease that holds this one's handle from now on,
        until its own ``__exit__`` (call it once, in any thread); this lease then ends
        without returning the handle. For a read that finishes after its block."""
        if self._entry is None:
            raise RuntimeError("Lease.hand_over() is called inside the with block")
        held = Lease(self._manager, self._spec, self._verify)
        held._entry, held.opened, self._entry = self._entry, self.opened, None
        return held

    @property
    def identity(self) -> FileIdentity | None:
        return None if self._entry is None else self._entry.identity


class HandleManager:
    """A bounded cache of open file handles with leases; see the module docstring.

    Parameters
    ----------
    maxsize : int
        Most open handles, leased ones excepted. Default: option ``file_cache_maxsize``.
    maxweight : int or None
        Optional bound on the summed ``FileSpec.weight`` of open handles.
    """

    def __init__(self, maxsize: int | None = None, maxweight: int | None = None) -> None:
        self._maxsize = maxsize if maxsize is not None else get_option("file_cache_maxsize")
        self._maxweight = maxweight
        self._written: set[tuple[Any, ...]] = set()  # keys once opened with mode="w"
        self._setup()
        _managers.add(self)

    def _setup(self) -> None:
        """(Re)initialise all per-process state: at creation and in a forked child."""
        self._pid = os.getpid()
        self._forks = _forks_seen
        self._lock = threading.Lock()
        # The idle handles by key, least recently used first (see the module docstring).
        self._idle: dict[tuple[Any, ...], _Entry] = {}
        self._leased: dict[tuple[Any, ...], _Entry] = {}
        self._retired: set[_Entry] = set()
        self._opening: dict[tuple[Any, ...], threading.Event] = {}
        self._doomed: list[_Entry] = []  # dropped under the lock, closed outside it
        self._weight_now = 0
        self._peak_open = 0
        self._counts = dict.fromkeys(_COUNTERS, 0)

    # -- public API ------------------------------------------------------------------

    def lease(self, spec: FileSpec, verify: bool = True) -> Lease:
        """A context manager that yields the open handle of ``spec`` for its duration.

        Raises the opener's error, with the path in the message, if the file cannot be
        opened (nothing is cached then), and ``FileNotFoundError`` if a cached file was
        deleted from disk.

        A cached handle is first checked against the file on disk (one ``stat``) and
        reopened if the file was replaced or modified since. ``verify=False`` skips
        that check: the handle may then be stale, and the caller must check the file
        itself once it has used the handle, and use it only where a stale handle cannot
        harm the process (plain positional reads; never a native library's calls).
        """
        return Lease(self, spec, verify)

    def acquire(self, spec: FileSpec) -> Any:
        """The open handle of ``spec`` without a lease: it may be closed by eviction at
        any time after this returns (xarray's ``acquire`` semantics). Prefer ``lease``."""
        entry, _ = self._checkout(spec)
        self._checkin(entry)
        return entry.handle

    def close(self, spec: FileSpec) -> None:
        """Close the handle of ``spec`` now, or when its last lease ends."""
        self._check_pid()
        key = spec.key
        with self._lock:
            if key in self._idle:
                self._drop(self._idle.pop(key))
            elif key in self._leased:
                self._retire(key)
            doomed = self._take_doomed()
        self._close_all(doomed, raise_errors=True)

    def clear(self) -> None:
        """Close every idle handle now and every leased handle when its lease ends."""
        self._check_pid()
        with self._lock:
            for key in list(self._idle.keys()):
                self._drop(self._idle.pop(key))
            for key in list(self._leased):
                self._retire(key)
            doomed = self._take_doomed()
        self._close_all(doomed, raise_errors=False)

    def resize(self, maxsize: int | None = None, maxweight: int | str | None = "keep") -> None:
        """Change the bounds (``maxweight=None`` removes the weight bound; leaving it out
        keeps it); idle handles over the new bound are closed now."""
        self._check_pid()
        with self._lock:
            if maxsize is not None:
                self._maxsize = maxsize
            if maxweight != "keep":
                self._maxweight = maxweight  # type: ignore[assignment]
            self._enforce_bounds()
            doomed = self._take_doomed()
        self._close_all(doomed, raise_errors=False)

    def info(self) -> CacheInfo:
        """Counters and a snapshot of the current state."""
        self._check_pid()
        with self._lock:
            open_now = self._open_now()
            return CacheInfo(
                **self._counts,
                open_now=open_now,
                leased_now=len(self._leased) + len(self._retired),
                peak_open=self._peak_open,
                maxsize=self._maxsize,
                over_bound=max(0, open_now - self._maxsize),
                weight_now=self._weight_now,
                maxweight=self._maxweight,
                pid=self._pid,
            )

    def reset_info(self) -> None:
        """Zero the counters; the peak restarts from what is open now."""
        self._check_pid()
        with self._lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)
            self._peak_open = self._open_now()

    def is_open(self, spec: FileSpec) -> bool:
        """True if a handle of ``spec`` is cached or leased now (for tests, diagnostics)."""
        self._check_pid()
        with self._lock:
            return spec.key in self._idle or spec.key in self._leased

    def __repr__(self) -> str:
        i = self.info()
        return (
            f"<HandleManager open={i.open_now}/{i.maxsize} leased={i.leased_now} "
            f"hits={i.hits} misses={i.misses} evictions={i.evictions}>"
        )

    # -- leases ----------------------------------------------------------------------

    def _checkout(self, spec: FileSpec, verify: bool = True) -> tuple[_Entry, bool]:
        """One more lease of ``spec``'s handle; True if this call opened the file.
        ``verify``: check a cached handle's file on disk first (see ``lease``)."""
        self._check_pid()
        key = spec.key
        while True:
            with self._lock:
                entry = self._take(key)
                if entry is None:
                    pending = self._opening.get(key)
                    owner = pending is None
                    if owner:
                        pending = self._opening[key] = threading.Event()
                else:
                    self._counts["hits"] += 1  # taken back if stale (one lock per hit)
            if entry is not None:
                if not verify or self._is_fresh(entry):
                    return entry, False
                continue  # stale: retired by _is_fresh; open it anew
            assert pending is not None
            if not owner:
                pending.wait()
                continue  # the owner opened it (or failed): look again
            return self._open_as_owner(spec, pending), True

    def _take(self, key: tuple[Any, ...]) -> _Entry | None:
        """Under the lock: the live entry of ``key`` with one more lease, or None."""
        entry = self._leased.get(key)
        if entry is None:
            entry = self._idle.pop(key, None)
            if entry is None:
                return None
            self._leased[key] = entry
        entry.leases += 1
        return entry

    def _open_as_owner(self, spec: FileSpec, pending: threading.Event) -> _Entry:
        key = spec.key
        try:
            entry = self._open(spec)
        except BaseException:
            with self._lock:
                del self._opening[key]
                self._counts["open_errors"] += 1
            pending.set()
            raise
        with self._lock:
            del self._opening[key]
            entry.leases = 1
            self._leased[key] = entry
            self._weight_now += spec.weight
            self._counts["misses"] += 1
            self._counts["opens"] += 1
            self._enforce_bounds()
            self._peak_open = max(self._peak_open, self._open_now())
            doomed = self._take_doomed()
        pending.set()
        self._close_all(doomed, raise_errors=False)
        return entry

    def _checkin(self, entry: _Entry) -> None:
        key = entry.spec.key
        with self._lock:
            entry.leases -= 1
            if entry.leases == 0:
                if entry.retired:
                    self._retired.discard(entry)
                    self._drop(entry)
                    self._counts["deferred_closes"] += 1
                else:
                    del self._leased[key]
                    self._idle[key] = entry  # the most recently used
                    self._enforce_bounds()  # may evict the oldest idle handles
            doomed = self._take_doomed()
        self._close_all(doomed, raise_errors=False)

    def _is_fresh(self, entry: _Entry, held: bool = False, hit: bool = True) -> bool:
        """Outside the lock: check the file on disk; if it is stale (or cannot be
        checked), retire the entry and check it in (unless ``held``: a lease holds it
        and checks it in at its end), taking back its hit if ``hit`` counted one."""
        spec, before = entry.spec, entry.identity
        if before is None or spec.path is None:
            return True
        try:
            now = FileIdentity.of(spec.path)
        except FileNotFoundError:
            self._release_stale(entry, held, hit)
            raise FileNotFoundError(
                f"{spec.path!r} was deleted while its handle was cached "
                f"({spec.describe()}); it cannot be read any more"
            ) from None
        except OSError:  # now a folder, no permission: not usable, and not left leased
            self._release_stale(entry, held, hit)
            raise
        if spec.writes:
            fresh = before.same_file(now)
            if fresh:
                entry.identity = now  # our own writes change size and mtime
        else:
            fresh = now == before
        if not fresh:
            self._release_stale(entry, held, hit)
            with self._lock:
                self._counts["stale_reopens"] += 1
        return fresh

    def _release_stale(self, entry: _Entry, held: bool, hit: bool) -> None:
        with self._lock:
            if hit:
                self._counts["hits"] -= 1  # counted when taken
            if not entry.retired:
                self._retire(entry.spec.key)
        if not held:
            self._checkin(entry)

    # -- opening and closing ---------------------------------------------------------

    def _open(self, spec: FileSpec) -> _Entry:
        """Open outside the manager lock. Errors name the path; nothing leaks."""
        kwargs = dict(spec.kwargs)
        if spec.mode != OMIT:
            kwargs["mode"] = "a" if spec.key in self._written else spec.mode
        identity = None
        try:
            if spec.path is not None and not spec.writes:
                identity = FileIdentity.of(spec.path)  # clear errors before the library's
            with spec.lock if spec.lock is not None else contextlib.nullcontext():
                handle = spec.opener(*spec.args, **kwargs)
        except OSError as err:
            raise _oserror_naming(err, spec) from err
        except Exception as err:
            err.add_note(f"while opening {spec.describe()}")
            raise
        try:
            if spec.path is not None and identity is None:
                identity = FileIdentity.of(spec.path)
        except BaseException:
            self._close_handle(spec, handle)
            raise
        if kwargs.get("mode") == "w":
            self._written.add(spec.key)
        return _Entry(spec, handle, identity)

    def _close_handle(self, spec: FileSpec, handle: Any) -> None:
        with spec.lock if spec.lock is not None else contextlib.nullcontext():
            handle.close()

    def _close_all(self, entries: list[_Entry], raise_errors: bool) -> None:
        """Outside the lock: close handles that left the cache."""
        first_error: BaseException | None = None
        for entry in entries:
            try:
                self._close_handle(entry.spec, entry.handle)
            except Exception as err:
                if raise_errors and first_error is None:
                    first_error = err
                else:
                    warnings.warn(
                        f"xrdist: closing {entry.spec.describe()} failed: {err!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            with self._lock:
                self._counts["closes"] += 1
        if first_error is not None:
            raise first_error

    # -- bookkeeping under the lock --------------------------------------------------

    def _drop(self, entry: _Entry) -> None:
        self._weight_now -= entry.spec.weight
        self._doomed.append(entry)

    def _retire(self, key: tuple[Any, ...]) -> None:
        entry = self._leased.pop(key)
        entry.retired = True
        self._retired.add(entry)

    def _enforce_bounds(self) -> None:
        """Evict idle handles, least recently used first, while the open handles exceed
        ``maxsize`` or their weight ``maxweight``: only recorded here, under the lock;
        closing happens outside it."""
        idle = self._idle
        while idle and (
            self._open_now() > self._maxsize
            or (self._maxweight is not None and self._weight_now > self._maxweight)
        ):
            self._drop(idle.pop(next(iter(idle))))
            self._counts["evictions"] += 1

    def _take_doomed(self) -> list[_Entry]:
        doomed, self._doomed = self._doomed, []
        return doomed

    def _open_now(self) -> int:
        return len(self._idle) + len(self._leased) + len(self._retired)

    # -- processes -------------------------------------------------------------------

    def _check_pid(self) -> None:
        """Forget the parent's state in a forked child. Runs on every lease, so it
        compares a count of forks kept by the at-fork hook (which forgets first) rather
        than calling ``os.getpid()``, a system call per lease."""
        if self._forks != _forks_seen:
            self._forget()

    def _forget(self) -> None:
        """In a forked child: drop (never close) the parent's handles and locks.

        The parent's handle objects are kept referenced for the child's lifetime, so
        their finalizers never run here: a finalizer could flush or close a file the
        parent still has open for writing.
        """
        entries = list(self._idle.values()) + list(self._leased.values())
        _inherited.extend(entry.handle for entry in entries + list(self._retired))
        self._setup()


def _oserror_naming(err: OSError, spec: FileSpec) -> OSError:
    """The same kind of OSError, with a message that names the file and the opener."""
    reason = err.strerror or str(err)
    message = f"cannot open {spec.describe()}: {reason}"
    try:
        return type(err)(err.errno, message) if err.errno is not None else type(err)(message)
    except Exception:
        return OSError(message)


# -- the process-wide manager ----------------------------------------------------------

_managers: weakref.WeakSet[HandleManager] = weakref.WeakSet()
# Handles inherited through fork: referenced, never used or finalized (see _forget).
_inherited: list[Any] = []
_global_manager: HandleManager | None = None
_global_lock = threading.Lock()
# Forks this process descends from since xrdist was imported (see _check_pid).
_forks_seen = 0


def _after_fork_in_child() -> None:
    global _global_lock, _forks_seen
    _global_lock = threading.Lock()
    _forks_seen += 1
    for manager in list(_managers):
        manager._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_manager() -> HandleManager:
    """This process's handle manager, sized by ``xrdist.set_options``."""
    global _global_manager
    if _global_manager is None:
        with _global_lock:
            if _global_manager is None:
                _global_manager = HandleManager(
                    get_option("file_cache_maxsize"), get_option("file_cache_maxweight")
                )
    return _global_manager


def _resize_on_option_change(changed: set[str]) -> None:
    if _global_manager is not None and changed & {"file_cache_maxsize", "file_cache_maxweight"}:
        _global_manager.resize(get_option("file_cache_maxsize"), get_option("file_cache_maxweight"))


on_change(_resize_on_option_change)


def cache_info() -> CacheInfo:
    """Statistics of this process's handle cache (``client.run(xrdist.cache_info)`` on a
    cluster gives each worker's)."""
    return get_manager().info()


def reset_cache_info() -> None:
    """Zero the counters of this process's handle cache."""
    get_manager().reset_info()


def clear_cache() -> None:
    """Close every cached handle of this process (leased ones when their lease ends)."""
    get_manager().clear()


@contextlib.contextmanager
def leased(spec: FileSpec) -> Iterator[Any]:
    """``with leased(spec) as handle``: a lease from this process's manager."""
    with get_manager().lease(spec) as handle:
        yield handle
