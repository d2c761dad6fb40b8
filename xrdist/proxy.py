"""Picklable handle proxies: a file described as (opener, path, mode, options).

A :class:`HandleProxy` holds no handle. It names how to open a file;
:meth:`~xrdist.HandleProxy.lease` borrows the handle from the handle manager *of the
process it is in*. Pickled (to a dask worker, say) it is a few hundred bytes, and on
arrival it reattaches to that worker's cache, so tasks on one worker that read the same
file share one open handle.

Equal proxies (same opener, canonical path, mode and options) share one cached handle.

Notes
-----
Thread-safe and picklable (with ``pickle`` and ``cloudpickle``) when ``opener`` is an
importable function or class and the options are picklable values. A proxy made with
``mode="w"`` travels as ``mode="a"``: a file is created once, where the proxy was made,
and never truncated by a reopen elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from xrdist.locks import NamedLock, canonical_path
from xrdist.manager import FileSpec, Lease, get_manager


@dataclass(frozen=True)
class HandleProxy:
    """How to open one file; lease the open handle with ``with proxy.lease() as h``.

    Parameters
    ----------
    opener : callable
        Called as ``opener(path, mode=mode, **options)``; returns an object with
        ``close()``. Must be importable by name where the proxy is unpickled.
    path : str
        Canonical path (use :meth:`create`, which resolves it).
    mode : str
        Open mode; ``"w"`` is used for the first open only (see the module notes).
    options : tuple of (name, value)
        Further keyword arguments of ``opener``, sorted by name.
    lock : NamedLock or None
        Held around open and close (the library lock of a library that is not
        thread-safe). Reads take their own locks.
    """

    opener: Callable[..., Any]
    path: str
    mode: str = "r"
    options: tuple[tuple[str, Any], ...] = ()
    lock: NamedLock | None = None

    @classmethod
    def create(
        cls,
        opener: Callable[..., Any],
        path: str | os.PathLike[str],
        mode: str = "r",
        lock: NamedLock | None = None,
        **options: Any,
    ) -> HandleProxy:
        """A proxy for ``opener(path, mode=mode, **options)``, with the path made canonical."""
        return cls(opener, canonical_path(path), mode, tuple(sorted(options.items())), lock)

    @cached_property
    def spec(self) -> FileSpec:
        """The :class:`~xrdist.manager.FileSpec` this proxy stands for."""
        return FileSpec(
            opener=self.opener,
            args=(self.path,),
            kwargs=self.options,
            mode=self.mode,
            path=self.path,
            lock=self.lock,
        )

    def lease(self, verify: bool = True) -> Lease:
        """Borrow the open handle from this process's manager for a ``with`` block
        (``verify``: see :meth:`~xrdist.manager.HandleManager.lease`)."""
        return get_manager().lease(self.spec, verify)

    def close(self) -> None:
        """Close this file's handle in this process (when its last lease ends)."""
        get_manager().close(self.spec)

    def __reduce__(self) -> tuple[Any, ...]:
        mode = "a" if self.mode == "w" else self.mode
        return (HandleProxy, (self.opener, self.path, mode, self.options, self.lock))

    def __repr__(self) -> str:
        name = getattr(self.opener, "__qualname__", repr(self.opener))
        extra = "".join(f", {k}={v!r}" for k, v in self.options)
        return f"HandleProxy({name}, {self.path!r}, mode={self.mode!r}{extra})"
