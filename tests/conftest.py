"""Shared fixtures: factories for tiny real files, and checks for leaked descriptors/threads."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# The disk cache of file descriptions of this test run (and of the processes it starts)
# lives in a fresh folder, never in the user's ~/.cache. Set before xrdist is imported.
os.environ["XRDIST_CACHE_DIR"] = tempfile.mkdtemp(prefix="xrdist-test-descriptions-")

import h5py
import netCDF4
import numpy as np
import pytest

import xrdist


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress-seconds",
        type=float,
        default=3.0,
        help="how long each stress test runs (default 3 s; raise it for a soak)",
    )


@pytest.fixture
def stress_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--stress-seconds"))


def expected_values(i: int, n: int = 64) -> np.ndarray:
    """The data the factories write into file number ``i``: easy to check, distinct."""
    return np.arange(n, dtype="int64") + 1000 * i


@pytest.fixture
def make_h5(tmp_path: Path) -> Callable[..., list[str]]:
    """``make_h5(count)`` writes ``count`` HDF5 files with dataset ``x`` =
    ``expected_values(i)``; returns their paths."""

    def make(count: int, n: int = 64, prefix: str = "f") -> list[str]:
        paths = []
        for i in range(count):
            path = str(tmp_path / f"{prefix}{i:04d}.h5")
            with h5py.File(path, "w") as f:
                f["x"] = expected_values(i, n)
            paths.append(path)
        return paths

    return make


@pytest.fixture
def make_nc(tmp_path: Path) -> Callable[..., list[str]]:
    """``make_nc(count)`` writes ``count`` netCDF4 files with variable ``x`` (dim ``n``) =
    ``expected_values(i)``; returns their paths."""

    def make(count: int, n: int = 64, prefix: str = "g") -> list[str]:
        paths = []
        for i in range(count):
            path = str(tmp_path / f"{prefix}{i:04d}.nc")
            with netCDF4.Dataset(path, "w") as ds:
                ds.createDimension("n", n)
                ds.createVariable("x", "i8", ("n",))[:] = expected_values(i, n)
            paths.append(path)
        return paths

    return make


def open_fds() -> set[str]:
    """This process's open descriptors, as targets (files, sockets, pipes)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return found


def _data_files(fds: set[str]) -> set[str]:
    return {fd for fd in fds if fd.endswith((".h5", ".nc", ".tif"))}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves data files open or threads running.

    The process-wide cache is cleared first and last, so only handles the test left
    open *outside* the cache count as leaks.
    """
    xrdist.clear_cache()
    gc.collect()
    fds_before = _data_files(open_fds())
    threads_before = set(threading.enumerate())
    yield
    xrdist.clear_cache()
    gc.collect()
    deadline = time.monotonic() + 5
    while True:
        leaked_fds = _data_files(open_fds()) - fds_before
        leaked_threads = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
        if not (leaked_fds or leaked_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked_fds, f"descriptors leaked: {sorted(leaked_fds)}"
    assert not leaked_threads, f"threads leaked: {leaked_threads}"


@pytest.fixture
def global_cache() -> Iterator[xrdist.HandleManager]:
    """The process-wide manager, emptied and with zeroed counters, restored afterwards."""
    manager = xrdist.get_manager()
    manager.clear()
    manager.reset_info()
    yield manager
    manager.clear()
    manager.reset_info()
