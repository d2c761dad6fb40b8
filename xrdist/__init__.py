"""xrdist: read stacks of netCDF/HDF5 and GeoTIFF files with xarray and dask, fast and in
bounded memory, on a laptop or a dask.distributed cluster.

Public names
------------
open_mfdataset, plan
    Many files as one dataset, each output chunk read straight from the files; the plan.
set_options, get_options
    Process-wide options (handle-cache size, ...).
cache_info, reset_cache_info, clear_cache, get_manager
    The process-wide handle cache and its statistics.
HandleManager, FileSpec, CacheInfo
    The handle cache itself (for tests and other backends).
HandleProxy
    A picklable stand-in for an open file.
CachingFileManager
    A drop-in for ``xarray.backends.CachingFileManager`` on top of the handle cache.
file_lock, library_lock, NamedLock
    Locks of the right scope, picklable by name.
"""

from xrdist.compat import CachingFileManager
from xrdist.identity import FileIdentity
from xrdist.locks import NamedLock, file_lock, library_lock
from xrdist.manager import (
    CacheInfo,
    FileSpec,
    HandleManager,
    cache_info,
    clear_cache,
    get_manager,
    reset_cache_info,
)
from xrdist.mfdataset import open_mfdataset, plan
from xrdist.options import get_options, set_options
from xrdist.plan import AmplificationWarning, MemoryBudgetWarning, Plan
from xrdist.proxy import HandleProxy
from xrdist.scan import StackError, StackWarning

__version__ = "0.1.0.dev0"

__all__ = [
    "AmplificationWarning",
    "CacheInfo",
    "CachingFileManager",
    "FileIdentity",
    "FileSpec",
    "HandleManager",
    "HandleProxy",
    "MemoryBudgetWarning",
    "NamedLock",
    "Plan",
    "StackError",
    "StackWarning",
    "cache_info",
    "clear_cache",
    "file_lock",
    "get_manager",
    "get_options",
    "library_lock",
    "open_mfdataset",
    "plan",
    "reset_cache_info",
    "set_options",
]
