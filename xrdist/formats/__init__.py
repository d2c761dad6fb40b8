"""One module per file format (or native library): open, describe, read a window.

Every format module provides ``LIBRARY`` (its name), ``proxy(path)`` (a picklable handle
proxy), ``walk(handle, path, identity, group)`` (a
:class:`~xrdist.description.FileDescription`) and ``read(handle, group, name, key)``
(an outer-indexed window as a numpy array), each taking the locks its library needs.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

#: library name -> module implementing it
FORMATS = {
    "netcdf4": "xrdist.formats.netcdf4lib",
    "h5py": "xrdist.formats.h5pylib",
    "tifffile": "xrdist.formats.tifflib",
}


@functools.cache
def get_format(library: str) -> ModuleType:
    """The module that reads files with ``library``; a clear error for unknown names.
    Cached: every file read looks it up."""
    try:
        return importlib.import_module(FORMATS[library])
    except KeyError:
        raise ValueError(
            f"library={library!r} is not supported; choose one of {sorted(FORMATS)}"
        ) from None
