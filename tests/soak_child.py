"""The soak of the reliability suite: threads hammering the handle cache and the backend.

:func:`soak` runs in the test process and, as ``python tests/soak_child.py CONFIG.json``,
in child processes (it prints its counters as one JSON line). Worker threads pick random
operations on a stack of small netCDF-4 and netCDF-3 files until a deadline:

* ``lease``: lease a file's handle from the cache and read a window through the library;
* ``open``: ``xr.open_dataset(path, engine="xrdist")``, read a window, sometimes close;
* ``pickle``: the same dataset pickled and unpickled, then read (handles reattach);
* ``stack``: ``xrdist.open_mfdataset`` over a run of consecutive files, sum or median
  over time (the reads fan out to the reader threads);
* ``walk``: open a fresh copy of a file under a new name (its metadata walked anew).

Every value read is compared with what the file holds (a formula of its index). A
monitor thread samples, every few milliseconds, the data files open in the process and
the cache's statistics, and counts a violation when more are open than the cache's
bound plus the leased handles plus what the threads may have in flight (an open not yet
registered, a close not yet done: ``SLACK`` per thread), or when the cache itself
reports more open handles than ``max(maxsize, leased)``. At the end the cache is
cleared and no data file may stay open and no thread but the reader pool may remain.

Not a test module: the tests in ``test_reliability_load.py`` run it.
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from typing import Any

import numpy as np

#: Files per worker thread that may be open beyond the cache's count at any moment: one
#: being opened (not registered yet) and one evicted (not closed yet).
SLACK = 2
SHAPE = (128, 136)  # int32: 68 KiB, above the size read with the metadata
CHUNKS = (64, 68)
OPERATIONS = ("lease", "open", "pickle", "stack", "walk")
WEIGHTS = (0.3, 0.25, 0.1, 0.25, 0.1)


def values_of(index: int) -> np.ndarray:
    """What file number ``index`` holds in ``v`` (int32, distinct per file)."""
    return np.arange(SHAPE[0] * SHAPE[1], dtype="i4").reshape(SHAPE) * 3 + index


def write_files(folder: str, count: int, file_format: str, first: int = 0) -> list[str]:
    """``count`` one-date files (``time`` = the file's index in days; ``v`` as
    :func:`values_of`; zlib chunks in netCDF-4, contiguous in netCDF-3)."""
    import netCDF4

    os.makedirs(folder, exist_ok=True)
    nc_format = "NETCDF4" if file_format == "netcdf4" else "NETCDF3_64BIT_OFFSET"
    paths = []
    for index in range(first, first + count):
        path = os.path.join(folder, f"{file_format}_{index:05d}.nc")
        with netCDF4.Dataset(path, "w", format=nc_format) as nc:
            nc.createDimension("time", 1)
            nc.createDimension("y", SHAPE[0])
            nc.createDimension("x", SHAPE[1])
            t = nc.createVariable("time", "i4", ("time",))
            t.units = "days since 2000-01-01"
            t[:] = [index]
            options = {"zlib": True, "chunksizes": (1, *CHUNKS)} if nc_format == "NETCDF4" else {}
            nc.createVariable("v", "i4", ("time", "y", "x"), **options)[:] = values_of(index)[None]
        paths.append(path)
    return paths


def index_of(path: str) -> int:
    return int(os.path.basename(path).split("_")[1].split(".")[0])


def data_fds(folders: tuple[str, ...]) -> int:
    """Descriptors of this process open on data files (``.nc``) in ``folders`` (not on
    files that other tests of the same process read)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.endswith(".nc") and target.startswith(folders):
                count += 1
        except OSError:
            pass
    return count


class Soak:
    """One process's soak: counters, the monitor and the operations."""

    def __init__(self, config: dict[str, Any]) -> None:
        import xrdist

        self.xrdist = xrdist
        self.config = config
        self.files = {k: list(v) for k, v in config["files"].items()}
        self.counts = dict.fromkeys(OPERATIONS, 0)
        self.failures: list[str] = []
        self.failure_count = 0
        self.violations: list[str] = []
        self.samples = 0
        self.max_fds = 0
        self.max_leased = 0
        self.max_over_cache = 0  # open descriptors beyond the cache's bound + leases
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.scratch = tempfile.mkdtemp(prefix="xrdist-soak-")
        every_file = [path for paths in self.files.values() for path in paths]
        self.folders = (os.path.commonpath(every_file) + os.sep, self.scratch + os.sep)

    # -- invariants ----------------------------------------------------------------------

    def monitor(self, threads: int) -> None:
        maxsize = self.config["maxsize"]
        while not self.stop.wait(0.005):
            before = self.xrdist.cache_info()
            fds = data_fds(self.folders)
            after = self.xrdist.cache_info()
            leased = max(before.leased_now, after.leased_now)
            self.samples += 1
            self.max_fds = max(self.max_fds, fds)
            self.max_leased = max(self.max_leased, leased)
            self.max_over_cache = max(self.max_over_cache, fds - maxsize - leased)
            if fds > maxsize + leased + SLACK * threads:
                self.violations.append(f"{fds} data files open, maxsize {maxsize}, {leased} leased")
            for info in (before, after):
                if info.open_now > max(info.maxsize, info.leased_now):
                    self.violations.append(f"cache over its bound: {info}")

    def fail(self, what: str) -> None:
        with self.lock:
            self.failure_count += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    # -- operations --------------------------------------------------------------------

    def window(self, rng: np.random.Generator) -> tuple[slice, slice]:
        y0, x0 = int(rng.integers(SHAPE[0])), int(rng.integers(SHAPE[1]))
        return (
            slice(y0, int(rng.integers(y0 + 1, SHAPE[0] + 1))),
            slice(x0, int(rng.integers(x0 + 1, SHAPE[1] + 1))),
        )

    def check(self, got: np.ndarray, expected: np.ndarray, what: str) -> None:
        if got.shape != expected.shape or not np.array_equal(got, expected):
            self.fail(f"{what}: wrong values")

    def run_lease(self, rng: np.random.Generator) -> None:
        from xrdist.formats import h5pylib, netcdf4lib

        kind = rng.choice(["netcdf4", "netcdf3"])
        path = str(rng.choice(self.files[kind]))
        y, x = self.window(rng)
        if kind == "netcdf4":
            with h5pylib.proxy(path).lease() as f:
                got = f["v"][0, y, x]
        else:
            with netcdf4lib.proxy(path).lease() as nc, netcdf4lib.LOCK:
                got = np.asarray(nc["v"][0, y, x])
        self.check(got, values_of(index_of(path))[y, x], f"lease {path}")

    def open_one(self, rng: np.random.Generator) -> tuple[Any, str]:
        import xarray as xr

        kind = rng.choice(["netcdf4", "netcdf3"])
        path = str(rng.choice(self.files[kind]))
        return xr.open_dataset(path, engine="xrdist"), path

    def run_open(self, rng: np.random.Generator) -> None:
        ds, path = self.open_one(rng)
        y, x = self.window(rng)
        self.check(ds.v[0, y, x].values, values_of(index_of(path))[y, x], f"open {path}")
        if rng.random() < 0.5:
            ds.close()

    def run_pickle(self, rng: np.random.Generator) -> None:
        ds, path = self.open_one(rng)
        copy = pickle.loads(pickle.dumps(ds))
        y, x = self.window(rng)
        self.check(copy.v[0, y, x].values, values_of(index_of(path))[y, x], f"pickle {path}")

    def run_stack(self, rng: np.random.Generator) -> None:
        kind = str(rng.choice(["netcdf4", "netcdf3"]))
        files = self.files[kind]
        count = int(rng.integers(10, 41))
        start = int(rng.integers(len(files) - count + 1))
        paths = files[start : start + count]
        first = index_of(paths[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # amplification of the netCDF-3 reads
            ds = self.xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 64, "x": 68})
        indexes = np.arange(first, first + count)
        if not np.array_equal(
            ds.time.values, np.datetime64("2000-01-01", "ns") + indexes.astype("m8[D]")
        ):
            self.fail(f"stack from {paths[0]}: wrong times")
        if rng.random() < 0.5:
            got = ds.v.astype("i8").sum("time").compute(scheduler="sync").values
            expected = values_of(0).astype("i8") * count + int(indexes.sum())
        else:
            got = ds.v.median("time").compute(scheduler="sync").values
            expected = values_of(0) + np.median(indexes)
        self.check(got, expected, f"stack of {count} from {paths[0]}")

    def run_walk(self, rng: np.random.Generator) -> None:
        import xarray as xr

        kind = rng.choice(["netcdf4", "netcdf3"])
        source = str(rng.choice(self.files[kind]))
        index = index_of(source)
        name = f"{kind}_{index:05d}.{threading.get_ident()}.{int(rng.integers(1 << 30))}.nc"
        path = os.path.join(self.scratch, name)
        shutil.copy(source, path)
        with xr.open_dataset(path, engine="xrdist") as ds:
            y, x = self.window(rng)
            self.check(ds.v[0, y, x].values, values_of(index)[y, x], f"walk {path}")
        os.remove(path)

    def worker(self, k: int, deadline: float) -> None:
        rng = np.random.default_rng([self.config["seed"], k])
        while time.monotonic() < deadline:
            op = str(rng.choice(OPERATIONS, p=WEIGHTS))
            try:
                getattr(self, f"run_{op}")(rng)
            except Exception:
                self.fail(f"{op}: {traceback.format_exc(limit=-4)}")
            with self.lock:
                self.counts[op] += 1

    # -- the run -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        xrdist = self.xrdist
        config = self.config
        xrdist.set_options(file_cache_maxsize=config["maxsize"])
        xrdist.clear_cache()
        xrdist.reset_cache_info()
        before = set(threading.enumerate())
        from xrdist.array import reader_threads

        readers = reader_threads()
        monitor = threading.Thread(target=self.monitor, args=(config["threads"] + readers,))
        monitor.start()
        deadline = time.monotonic() + config["seconds"]
        workers = [
            threading.Thread(target=self.worker, args=(k, deadline))
            for k in range(config["threads"])
        ]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        self.stop.set()
        monitor.join()
        info = xrdist.cache_info()
        xrdist.clear_cache()
        gc.collect()
        end = time.monotonic() + 10

        while (data_fds(self.folders) or xrdist.cache_info().open_now) and time.monotonic() < end:
            time.sleep(0.05)
        left = data_fds(self.folders)
        extra = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
        unexpected = [n for n in extra if not n.startswith("xrdist-read")]
        shutil.rmtree(self.scratch, ignore_errors=True)
        return {
            "pid": os.getpid(),
            "counts": self.counts,
            "failures": self.failure_count,
            "failure_samples": self.failures,
            "violations": len(self.violations),
            "violation_samples": self.violations[:5],
            "samples": self.samples,
            "max_fds": self.max_fds,
            "max_leased": self.max_leased,
            "max_over_cache": self.max_over_cache,
            "bound": config["maxsize"],
            "slack": SLACK * (config["threads"] + readers),
            "fds_left": left,
            "threads_left": unexpected,
            "reader_threads": len(extra) - len(unexpected),
            "read_threads": readers,
            "opens": info.opens,
            "evictions": info.evictions,
            "hits": info.hits,
            "deferred_closes": info.deferred_closes,
            "leased_at_end": info.leased_now,
        }


def soak(config: dict[str, Any]) -> dict[str, Any]:
    """Run the soak in this process (``config``: files by kind, seconds, threads,
    maxsize, seed); its counters."""
    return Soak(config).run()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(soak(json.load(f))))
