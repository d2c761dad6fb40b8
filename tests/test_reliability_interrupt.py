"""Reliability: Ctrl-C in the middle of an open or a compute leaks nothing.

A real SIGINT is sent to the main thread (``signal.pthread_kill`` from a timer thread) at
a random moment of a round that opens a stack (its files described in threads), computes
a sum over time with dask's threaded scheduler and reads single files in the main
thread. After each ``KeyboardInterrupt``: once the tasks still running in the pool threads
finish, no handle is leased, the data files open in the process are exactly the handles
of the cache (at most its bound), no thread was added, and the next compute gives the
right values. The loop runs for ``--soak-seconds`` (at least ``MIN_ROUNDS`` rounds).
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pytest
import xarray as xr
from conftest import _data_files, open_fds

import xrdist
from xrdist.description import clear_descriptions

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(1200)]

N_FILES, SIZE, MAXSIZE, MIN_ROUNDS = 60, 96, 16, 8


def write_files(folder: Path) -> np.ndarray:
    """``N_FILES`` one-date netCDF-4 files of int16 ``v`` (zlib chunks of 32 x 32, above
    the size read with the metadata); returns the values written."""
    values = np.random.default_rng(3).integers(-999, 999, (N_FILES, SIZE, SIZE)).astype("i2")
    folder.mkdir()
    for i in range(N_FILES):
        with netCDF4.Dataset(folder / f"f{i:03d}.nc", "w") as nc:
            nc.createDimension("time", 1)
            nc.createDimension("y", SIZE)
            nc.createDimension("x", 2 * SIZE)
            t = nc.createVariable("time", "i4", ("time",))
            t.units = "days since 2020-01-01"
            t[:] = [i]
            v = nc.createVariable("v", "i2", ("time", "y", "x"), zlib=True, chunksizes=(1, 32, 32))
            v[:] = np.concatenate([values[i], values[i]], axis=1)[None]
    return values


def run_round(
    paths: list[str], phase: list[str], pool: Any = None, opened: list[float] | None = None
) -> np.ndarray:
    """Open the stack (walking every file), load ten files one by one in this thread, and
    compute the sum over time (on dask's pool of this thread, or ``pool``); ``phase``
    says where it is (and ``opened`` when the open ended)."""
    clear_descriptions(disk=False)
    phase[0] = "open"
    ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 32, "x": 64})
    if opened is not None:
        opened.append(time.monotonic())
    phase[0] = "single files"
    for path in paths[:10]:
        with xr.open_dataset(path, engine="xrdist") as one:
            one.v.load()
    phase[0] = "compute"
    total = ds.v.astype("i8").sum("time").compute(scheduler="threads", pool=pool).values
    phase[0] = "after"
    return total


def settled(
    threads_before: set[threading.Thread], folder: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait until the process is quiet (the tasks an interrupt left running in the pool
    threads have ended: no lease held, no thread added, the cache's counters unchanged
    for 0.3 s); what was found then (``fds``: those on data files in ``folder``, not on
    files that other tests of the process read)."""
    deadline = time.monotonic() + timeout
    last, quiet = None, 0
    while True:
        info = xrdist.cache_info()
        extra = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        counters = (info.hits, info.misses, info.closes)
        quiet = quiet + 1 if counters == last and not info.leased_now and not extra else 0
        last = counters
        if quiet >= 6 or time.monotonic() > deadline:
            fds = {fd for fd in _data_files(open_fds()) if f"->{folder}" in fd}
            return {"info": info, "threads": extra, "fds": fds}
        time.sleep(0.05)


def computed_in_time(paths: list[str], pool: Any, seconds: float = 120.0) -> np.ndarray:
    """A fresh round in a helper thread, so that a deadlock left behind by an interrupt
    (a lease or an open that never ends) fails the test instead of hanging it. Its
    compute runs on ``pool`` (dask would give the helper thread a pool of its own that
    outlives it)."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(run_round(paths, ["?"], pool)))
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "a compute after an interrupt did not finish: deadlock"
    assert out, "the compute after an interrupt raised (see the thread's exception)"
    return out[0]


@pytest.fixture
def sigint_raises() -> Any:
    """Python's own SIGINT handler for the test: a shell starts a background job with
    SIGINT ignored, and Python then keeps it ignored (every interrupt would be lost)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupts_mid_compute_leak_nothing_and_the_next_compute_is_right(
    tmp_path: Path, soak_seconds: float, figures: Any, sigint_raises: None
) -> None:
    """SIGINT at random moments of open, compute and single-file reads, round after
    round: a KeyboardInterrupt each time, no lease, descriptor or thread left behind,
    and the next compute exact."""
    values = write_files(tmp_path / "files")
    paths = sorted(str(p) for p in (tmp_path / "files").glob("*.nc"))
    folder = f"{tmp_path / 'files'}/"
    expected = values.astype("i8").sum(axis=0)
    expected = np.concatenate([expected, expected], axis=1)
    rng = np.random.default_rng(4)
    where = {"open": 0, "compute": 0, "single files": 0, "after": 0}
    failures: list[str] = []
    pool = ThreadPoolExecutor(2, "checks")
    with xrdist.set_options(file_cache_maxsize=MAXSIZE, description_cache_dir=None), pool:
        xrdist.clear_cache()
        np.testing.assert_array_equal(run_round(paths, ["?"]), expected)  # warms the pools
        np.testing.assert_array_equal(computed_in_time(paths, pool), expected)
        start, opened = time.monotonic(), []
        run_round(paths, ["?"], opened=opened)
        duration = time.monotonic() - start  # of a whole round: interrupts fall within it
        open_part = opened[0] - start  # even rounds are interrupted in it, odd ones after
        threads_before = set(threading.enumerate())
        deadline = time.monotonic() + soak_seconds
        rounds = lost = 0
        while rounds < MIN_ROUNDS or time.monotonic() < deadline:
            phase = ["start"]
            low, high = (0, open_part) if rounds % 2 == 0 else (open_part, 0.9 * duration)
            timer = threading.Timer(
                float(rng.uniform(low, high)),
                signal.pthread_kill,
                (threading.main_thread().ident, signal.SIGINT),
            )
            try:
                timer.start()
                run_round(paths, phase)
                timer.join()
                time.sleep(2)  # the signal arrives here if the round was faster
                # No KeyboardInterrupt: Python drops one raised in a finalizer or a weakref
                # callback (pytest shows it as an unraisable exception); the checks stand.
                lost += 1
            except KeyboardInterrupt:
                where[phase[0]] += 1
            timer.join()
            found = settled(threads_before, folder)
            info = found["info"]
            if info.leased_now or found["threads"]:
                failures.append(f"round {rounds} ({phase[0]}): left {found}")
            if len(found["fds"]) != info.open_now or info.open_now > MAXSIZE:
                failures.append(f"round {rounds} ({phase[0]}): descriptors {found}")
            if not np.array_equal(computed_in_time(paths, pool), expected):
                failures.append(f"round {rounds} ({phase[0]}): wrong values after it")
            rounds += 1
        xrdist.clear_cache()
        assert not settled(threads_before, folder)["fds"]
    figures.unit, figures.operations = "rounds (open, 10 loads, compute)", 2 * rounds
    figures.files, figures.faults, figures.failures = N_FILES, rounds, len(failures)
    figures.threads = len(threads_before)
    figures.notes.update({f"interrupted in {k}": v for k, v in where.items()})
    figures.notes["interrupts lost in a finalizer"] = lost
    assert not failures, "\n".join(failures[:10])
    assert where["open"] + where["compute"] + where["single files"] >= rounds // 2, where
