"""The handle-cache demo: many real netCDF files read from threads through a small cache.

Writes ``--files`` small netCDF4 files, then reads them in random order from
``--threads`` threads through :class:`~xrdist.proxy.HandleProxy` leases, once with
h5py and once with netCDF4-python handles, and prints what the cache did and what a
hit and a miss (an open) cost. Every value read is checked.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import h5py
import netCDF4
import numpy as np

from xrdist.locks import HDF5, NETCDF_C, library_lock
from xrdist.manager import HandleManager
from xrdist.proxy import HandleProxy


def write_files(folder: str, count: int, size: int = 256) -> list[str]:
    """``count`` netCDF4 files, each with a variable ``x`` = ``arange(size) + 1000 * i``."""
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"sample_{i:05d}.nc")
        with netCDF4.Dataset(path, "w") as ds:
            ds.createDimension("n", size)
            ds.createVariable("x", "i8", ("n",), zlib=True)[:] = np.arange(size) + 1000 * i
        paths.append(path)
    return paths


def _read_h5(handle: Any) -> np.ndarray:
    return handle["x"][:]


def _read_nc(handle: Any) -> np.ndarray:
    with library_lock(NETCDF_C):  # netCDF-C is not thread-safe: reads too
        return handle.variables["x"][:].data


@dataclass
class Library:
    name: str
    opener: Callable[..., Any]
    lock_name: str
    read: Callable[[Any], np.ndarray]


LIBRARIES = [
    Library("h5py", h5py.File, HDF5, _read_h5),
    Library("netCDF4", netCDF4.Dataset, NETCDF_C, _read_nc),
]


def _timed_leases(manager: HandleManager, proxies: list[HandleProxy], repeat: int) -> float:
    """Seconds per lease (enter + exit), single thread."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        for proxy in proxies:
            with manager.lease(proxy.spec):
                pass
    return (time.perf_counter() - t0) / (repeat * len(proxies))


def measure_costs(paths: list[str], library: Library) -> tuple[float, float]:
    """(seconds per cache hit, seconds per miss) for one library, single-threaded."""
    proxies = [
        HandleProxy.create(library.opener, p, lock=library_lock(library.lock_name)) for p in paths
    ]
    warm = HandleManager(maxsize=len(proxies) + 1)
    _timed_leases(warm, proxies, 1)
    hit = _timed_leases(warm, proxies, 20)
    warm.clear()
    cold = HandleManager(maxsize=1)  # every lease of a new file opens it
    miss = _timed_leases(cold, proxies, 1)
    cold.clear()
    return hit, miss


def threaded_reads(
    paths: list[str], library: Library, threads: int, passes: int, cache_size: int
) -> tuple[float, int, dict[str, int]]:
    """Read every file ``passes`` times in random order from ``threads`` threads."""
    manager = HandleManager(maxsize=cache_size)
    proxies = [
        HandleProxy.create(library.opener, p, lock=library_lock(library.lock_name)) for p in paths
    ]
    order = np.random.default_rng(0).permutation(np.tile(np.arange(len(paths)), passes))
    checked = [0]
    guard = threading.Lock()

    def read_one(i: int) -> None:
        with manager.lease(proxies[i].spec) as handle:
            values = library.read(handle)
        if not np.array_equal(values, np.arange(values.size) + 1000 * i):
            raise AssertionError(f"wrong data read from {paths[i]}")
        with guard:
            checked[0] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read_one, order))
    wall = time.perf_counter() - t0
    info = manager.info().as_dict()
    manager.clear()
    return wall, checked[0], info


def run(files: int = 300, threads: int = 8, passes: int = 3, cache_size: int = 32) -> None:
    """Print the demo's table; see the module docstring."""
    with tempfile.TemporaryDirectory(prefix="xrdist-demo-") as folder:
        print(f"writing {files} netCDF4 files in {folder} ...")
        paths = write_files(folder, files)
        print(
            f"reading each file {passes} times in random order from {threads} threads "
            f"through a handle cache of {cache_size}; every value checked\n"
        )
        header = (
            f"{'library':<8} {'reads':>6} {'wall s':>7} {'opens':>6} {'hits':>6} "
            f"{'evict':>6} {'peak':>5} {'hit us':>7} {'miss us':>8}"
        )
        print(header)
        print("-" * len(header))
        for library in LIBRARIES:
            wall, checked, info = threaded_reads(paths, library, threads, passes, cache_size)
            hit, miss = measure_costs(paths[:100], library)
            print(
                f"{library.name:<8} {checked:>6} {wall:>7.2f} {info['opens']:>6} "
                f"{info['hits']:>6} {info['evictions']:>6} {info['peak_open']:>5} "
                f"{hit * 1e6:>7.1f} {miss * 1e6:>8.0f}"
            )
        print(
            "\nhit us: one lease of a cached handle (includes a stat() staleness check); "
            "miss us: one lease that opens the file."
        )
