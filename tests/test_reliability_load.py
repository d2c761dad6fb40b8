"""Reliability under load: a soak over thousands of files, and a low descriptor limit.

* The soak (:mod:`soak_child`): worker threads in this process and in two child
  processes lease handles, open files, pickle datasets, open and reduce stacks and walk
  fresh copies of 2,000 small netCDF-4 and netCDF-3 files, for ``--soak-seconds``, with
  a handle cache of 16. Every value read is checked; a monitor in each process checks,
  every few milliseconds, that the data files open never exceed the cache's bound plus
  the leased handles (plus what each thread may have in flight); at the end nothing is
  left open and no thread remains but the reader pool.
* With the soft ``RLIMIT_NOFILE`` at 256 (set in a child process before xrdist is
  imported, so the cache's default bound is 128), a 5,000-file stack opens and its median
  over time equals numpy's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from soak_child import soak, write_files

import xrdist

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(3600)]

CHILD = Path(__file__).with_name("soak_child.py")
N_NETCDF4, N_NETCDF3 = 1500, 500
THREADS, CHILDREN, MAXSIZE = 3, 2, 16


@pytest.fixture(scope="module")
def soak_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """2,000 files, described once here so that every process finds their descriptions
    in the (test run's) description cache on disk."""
    folder = tmp_path_factory.mktemp("soak")
    files = {
        "netcdf4": write_files(str(folder / "nc4"), N_NETCDF4, "netcdf4"),
        "netcdf3": write_files(str(folder / "nc3"), N_NETCDF3, "netcdf3", first=N_NETCDF4),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for paths in files.values():
            xrdist.open_mfdataset(paths)
    xrdist.clear_cache()
    return files


def test_soak_threads_and_processes_over_thousands_of_files(
    soak_files: dict[str, list[str]], tmp_path: Path, soak_seconds: float, figures: Any
) -> None:
    """No exception, every value right, descriptors within the bound plus leases all the
    time, and nothing left open or running at the end, in each of three processes."""
    config = {"files": soak_files, "seconds": soak_seconds, "threads": THREADS}
    config["maxsize"] = MAXSIZE
    children = []
    for k in range(1, CHILDREN + 1):
        config_file = tmp_path / f"config{k}.json"
        config_file.write_text(json.dumps({**config, "seed": k}))
        children.append(
            subprocess.Popen(
                [sys.executable, str(CHILD), str(config_file)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [soak({**config, "seed": 0})]
    for child in children:
        out, err = child.communicate(timeout=soak_seconds + 300)
        assert child.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    operations = sum(sum(r["counts"].values()) for r in results)
    failures = sum(r["failures"] + r["violations"] + r["fds_left"] for r in results)
    failures += sum(len(r["threads_left"]) + r["leased_at_end"] for r in results)
    figures.unit, figures.operations = "operations", operations
    figures.files = N_NETCDF4 + N_NETCDF3
    figures.threads = sum(THREADS + r["read_threads"] for r in results)
    figures.processes = len(results)
    figures.failures = failures
    by_op: dict[str, int] = {}
    for r in results:
        for op, n in r["counts"].items():
            by_op[op] = by_op.get(op, 0) + n
    figures.notes.update(
        by_operation=by_op,
        opens=sum(r["opens"] for r in results),
        evictions=sum(r["evictions"] for r in results),
        invariant_samples=sum(r["samples"] for r in results),
        max_data_fds=max(r["max_fds"] for r in results),
        max_leased=max(r["max_leased"] for r in results),
        max_over_bound_plus_leases=max(r["max_over_cache"] for r in results),
    )
    for r in results:
        assert not r["failures"], r["failure_samples"]
        assert not r["violations"], r["violation_samples"]
        assert r["fds_left"] == 0 and r["leased_at_end"] == 0, r
        assert not r["threads_left"] and r["reader_threads"] <= r["read_threads"], r
        assert all(r["counts"].values()), r["counts"]  # every operation ran
    assert failures == 0


RLIMIT_CHILD = """
import json, os, resource, sys, threading, time, warnings
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # before xrdist is imported
import numpy as np
import xrdist

folder, count = sys.argv[1], int(sys.argv[2])
peak, stop = [0], threading.Event()

def watch():
    while not stop.wait(0.002):
        peak[0] = max(peak[0], len(os.listdir("/proc/self/fd")))

watcher = threading.Thread(target=watch)
watcher.start()
start = time.monotonic()
paths = sorted(os.path.join(folder, p) for p in os.listdir(folder))
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 16, "x": 16})
opened = time.monotonic()
median = ds.v.median("time").compute()
done = time.monotonic()
stop.set()
watcher.join()
np.save(os.path.join(folder, "..", "median.npy"), median.values)
info = xrdist.cache_info()
print(json.dumps({
    "limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "maxsize": info.maxsize,
    "files": len(paths), "times": [str(ds.time.values[0]), str(ds.time.values[-1])],
    "peak_fds": peak[0], "opens": info.opens, "leases": info.hits + info.misses,
    "open_seconds": opened - start, "median_seconds": done - opened,
}))
"""


@pytest.mark.slow
def test_a_5000_file_stack_under_a_256_descriptor_limit(tmp_path: Path, figures: Any) -> None:
    """A child process with ``ulimit -n 256`` opens 5,000 files as one stack and computes
    their median over time: the result equals numpy's, descriptors stay under the limit
    (the cache defaults to half of it), and the times are the files' own."""
    import netCDF4

    count = 5000
    rng = np.random.default_rng(6)
    data = rng.integers(0, 10_000, (count, 16, 16)).astype("i2")
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(count):
        with netCDF4.Dataset(folder / f"s{i:05d}.nc", "w") as nc:
            nc.createDimension("time", 1)
            nc.createDimension("y", 16)
            nc.createDimension("x", 16)
            t = nc.createVariable("time", "i4", ("time",))
            t.units = "hours since 2000-01-01"
            t[:] = [i]
            nc.createVariable("v", "i2", ("time", "y", "x"), zlib=True)[:] = data[i : i + 1]
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", RLIMIT_CHILD, str(folder), str(count)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    median = np.load(tmp_path / "median.npy")
    np.testing.assert_array_equal(median, np.median(data, axis=0))
    assert (got["limit"], got["maxsize"], got["files"]) == (256, 128, count)
    assert got["peak_fds"] < 256, got
    assert got["times"][0].startswith("2000-01-01T00") and got["times"][1].startswith(
        "2000-07-27T07"
    ), got
    figures.unit, figures.operations = "file reads (leases)", got["leases"]
    figures.files, figures.threads = count, 0
    figures.notes.update(
        limit=got["limit"],
        cache_maxsize=got["maxsize"],
        peak_descriptors=got["peak_fds"],
        opens=got["opens"],
        open_seconds=round(got["open_seconds"], 1),
        median_seconds=round(got["median_seconds"], 1),
        child_seconds=round(time.monotonic() - start, 1),
    )
