"""Lazily indexed arrays over one variable of one file.

:class:`FileArray` is the ``BackendArray`` of the xrdist engine. Indexing reads only the
requested window: each read leases the file's handle from the process's handle manager
for the whole of the read and takes the locks its format needs.

Notes
-----
Thread-safe: any number of threads may index one array at once. Picklable: it holds a
:class:`~xrdist.proxy.HandleProxy` and the variable's name, shape and dtype, never a
handle or data (a few hundred bytes); unpickled in another process it reads through that
process's cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from xarray.backends import BackendArray
from xarray.core import indexing

from xrdist.formats import get_format
from xrdist.identity import FileIdentity
from xrdist.proxy import HandleProxy


class FileChangedError(OSError):
    """The file changed on disk after it was opened: its description no longer holds."""


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
        lease = self.proxy.lease()
        with lease as handle:
            if lease.identity is not None and lease.identity != self.identity:
                raise FileChangedError(
                    f"{self.proxy.path!r} {self.identity.describe_change(lease.identity)} "
                    f"after it was opened; variable {self.name!r} cannot be read from it "
                    "safely. Open the dataset again."
                )
            try:
                return get_format(self.library).read(handle, self.group, self.name, key)
            except IndexError as err:
                raise IndexError(
                    f"cannot index variable {self.name!r} of {self.proxy.path!r} with "
                    f"{key!r}: {err}"
                ) from err

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def __repr__(self) -> str:
        return f"FileArray({self.proxy.path!r}, {self.name!r}, shape={self.shape})"
