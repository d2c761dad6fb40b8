"""Handles across processes: fork safety, spawn, pickling, and a real dask.distributed cluster.

Every test reads real HDF5/netCDF files written by the conftest factories, in real child
processes (``os.fork``, a "spawn" process pool, ``distributed.LocalCluster`` workers).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import pickle
import select
import signal
import threading
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

import cloudpickle
import h5py
import netCDF4
import numpy as np
import pytest
from conftest import expected_values
from distributed import Client, LocalCluster

import xrdist

H5_LOCK = xrdist.library_lock("hdf5")
NC_LOCK = xrdist.library_lock("netcdf-c")


# -- helpers (module level, so that spawned children and dask workers can import them) ---


def proxy_lease_read(proxy):
    """Read dataset ``x`` through a lease of this process's handle cache."""
    with proxy.lease() as h:
        return h["x"][:]


def proxy_lease_read_locked(proxy):
    """As ``proxy_lease_read``, holding the proxy's library lock around the calls into the
    library (netCDF-C is not thread-safe)."""
    with proxy.lease() as h, proxy.lock:
        return np.asarray(h["x"][:])


def spawned_child_read(payload):
    """In a spawned child: unpickle a proxy, read it twice, report what the cache saw."""
    proxy = pickle.loads(payload)
    before = xrdist.cache_info()
    first = proxy_lease_read(proxy)
    second = proxy_lease_read(proxy)
    return {
        "pid": os.getpid(),
        "before": before,
        "after": xrdist.cache_info(),
        "first": first,
        "second": second,
    }


def run_in_fork(func, timeout=30.0):
    """Run ``func()`` in an ``os.fork`` child; return ``(child_pid, result)``.

    The result travels back pickled through a pipe. The child's exception fails the test
    with its traceback; a child that does not finish within ``timeout`` (a deadlock on a
    lock inherited from the parent, say) is killed and fails the test.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_fd)
            try:
                payload = ("ok", func())
            except BaseException:
                payload = ("error", traceback.format_exc())
            with os.fdopen(write_fd, "wb") as out:
                pickle.dump(payload, out)
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child did not finish within {timeout} s (deadlock?)")
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"forked child exited with {status}"
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        pytest.fail(f"in the forked child:\n{value}")
    return pid, value


class RecordingUnpickler(pickle.Unpickler):
    """Records every global (class, function) a pickle refers to."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add((module, name))
        return super().find_class(module, name)


def pickled_globals(data):
    """``(loaded object, set of (module, name) globals)`` of pickle bytes."""
    unpickler = RecordingUnpickler(data)
    return unpickler.load(), unpickler.globals


def h5_proxies(paths, mode="r"):
    return [xrdist.HandleProxy.create(h5py.File, p, mode=mode, lock=H5_LOCK) for p in paths]


def nc_proxies(paths):
    return [xrdist.HandleProxy.create(netCDF4.Dataset, p, lock=NC_LOCK) for p in paths]


# -- fork and spawn ------------------------------------------------------------------------


def test_fork_child_starts_empty_and_opens_its_own_handle(make_h5, global_cache):
    """A forked child sees an empty cache under its own pid, opens its own handle that
    reads correct data, closes only what it opened, and leaves the parent's handles
    usable."""
    proxies = h5_proxies(make_h5(3))
    for i, proxy in enumerate(proxies):
        with global_cache.lease(proxy.spec) as h:
            np.testing.assert_array_equal(h["x"][:], expected_values(i))
    parent = xrdist.cache_info()
    assert (parent.open_now, parent.opens, parent.pid) == (3, 3, os.getpid())

    def child():
        before = xrdist.cache_info()
        first = proxy_lease_read(proxies[1])
        after_first = xrdist.cache_info()
        second = proxy_lease_read(proxies[1])
        after_second = xrdist.cache_info()
        xrdist.clear_cache()
        return {
            "pid": os.getpid(),
            "before": before,
            "first": first,
            "after_first": after_first,
            "second": second,
            "after_second": after_second,
            "cleared": xrdist.cache_info(),
        }

    child_pid, got = run_in_fork(child)

    assert got["pid"] == child_pid != os.getpid()
    before = got["before"]
    assert before.pid == child_pid
    assert (before.open_now, before.leased_now, before.opens, before.hits) == (0, 0, 0, 0)
    np.testing.assert_array_equal(got["first"], expected_values(1))
    np.testing.assert_array_equal(got["second"], expected_values(1))
    first, second = got["after_first"], got["after_second"]
    assert (first.opens, first.misses, first.hits, first.open_now) == (1, 1, 0, 1)
    assert (second.opens, second.misses, second.hits, second.open_now) == (1, 1, 1, 1)
    # The child closed the one handle it opened, none of the parent's.
    assert (got["cleared"].closes, got["cleared"].open_now) == (1, 0)

    # The parent's cache is untouched and its handles still read.
    global_cache.reset_info()
    for i, proxy in enumerate(proxies):
        np.testing.assert_array_equal(proxy_lease_read(proxy), expected_values(i))
    info = xrdist.cache_info()
    assert (info.hits, info.opens, info.closes, info.open_now) == (3, 0, 0, 3)
    assert info.pid == os.getpid()


def test_fork_while_leased_and_library_lock_held(make_h5, global_cache):
    """Forking while the parent holds a lease and another parent thread holds the HDF5
    library lock: the child has no lease, does not deadlock on the lock, and reads; the
    parent's lease and lock work on afterwards."""
    (proxy,) = h5_proxies(make_h5(1))
    holding, release = threading.Event(), threading.Event()

    def hold_lock():
        with H5_LOCK:
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_lock)
    with proxy.lease() as parent_handle:
        holder.start()
        try:
            assert holding.wait(10)
            assert H5_LOCK.locked()

            def child():
                before = xrdist.cache_info()
                data = proxy_lease_read(proxy)  # opens under the (fresh) library lock
                return before, data, xrdist.cache_info()

            child_pid, (before, data, after) = run_in_fork(child, timeout=20)
        finally:
            release.set()
            holder.join(10)
        assert (before.pid, before.open_now, before.leased_now) == (child_pid, 0, 0)
        np.testing.assert_array_equal(data, expected_values(0))
        assert (after.opens, after.open_now, after.leased_now) == (1, 1, 0)
        np.testing.assert_array_equal(parent_handle["x"][:], expected_values(0))
        assert xrdist.cache_info().leased_now == 1
    assert not H5_LOCK.locked()
    info = xrdist.cache_info()
    assert (info.open_now, info.leased_now, info.opens) == (1, 0, 1)
    np.testing.assert_array_equal(proxy_lease_read(proxy), expected_values(0))
    assert xrdist.cache_info().hits == 1


def test_fork_netcdf4_child_reads_with_own_handle(make_nc, global_cache):
    """The fork guarantees hold for netCDF4.Dataset under the netcdf-c library lock: the
    child starts empty, opens its own Dataset and reads correct values; the parent's
    Datasets still read afterwards."""
    proxies = nc_proxies(make_nc(3))
    for i, proxy in enumerate(proxies):
        np.testing.assert_array_equal(proxy_lease_read_locked(proxy), expected_values(i))
    assert xrdist.cache_info().open_now == 3

    def child():
        before = xrdist.cache_info()
        data = [proxy_lease_read_locked(p) for p in (proxies[2], proxies[0], proxies[2])]
        return before, data, xrdist.cache_info()

    child_pid, (before, data, after) = run_in_fork(child)

    assert (before.pid, before.open_now, before.opens) == (child_pid, 0, 0)
    for got, i in zip(data, (2, 0, 2), strict=True):
        np.testing.assert_array_equal(got, expected_values(i))
    assert (after.opens, after.hits, after.open_now) == (2, 1, 2)

    global_cache.reset_info()
    for i, proxy in enumerate(proxies):
        np.testing.assert_array_equal(proxy_lease_read_locked(proxy), expected_values(i))
    info = xrdist.cache_info()
    assert (info.hits, info.opens, info.open_now) == (3, 0, 3)


def test_spawn_child_reads_through_unpickled_proxy(make_h5, global_cache):
    """A "spawn" child unpickles a proxy, opens the file once in its own cache and reads
    correct data (the second read is a hit)."""
    (proxy,) = h5_proxies(make_h5(2)[1:])
    np.testing.assert_array_equal(proxy_lease_read(proxy), expected_values(1))  # parent open
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        got = pool.submit(spawned_child_read, pickle.dumps(proxy)).result(timeout=60)
    assert got["pid"] != os.getpid()
    assert (got["before"].pid, got["before"].open_now, got["before"].opens) == (got["pid"], 0, 0)
    np.testing.assert_array_equal(got["first"], expected_values(1))
    np.testing.assert_array_equal(got["second"], expected_values(1))
    after = got["after"]
    assert (after.opens, after.misses, after.hits, after.open_now) == (1, 1, 1, 1)
    # The parent's handle is unaffected.
    np.testing.assert_array_equal(proxy_lease_read(proxy), expected_values(1))
    assert xrdist.cache_info().opens == 1


# -- pickling ------------------------------------------------------------------------------


@pytest.mark.parametrize("dumps", [pickle.dumps, cloudpickle.dumps], ids=["pickle", "cloudpickle"])
def test_proxy_pickles_small_without_handle_and_shares_cached_handle(make_h5, global_cache, dumps):
    """A pickled proxy is a few hundred bytes naming only the proxy, opener and lock
    classes (no handle), and the copy is equal and leases the very same cached handle."""
    (path,) = make_h5(1)
    (proxy,) = h5_proxies([path])
    with proxy.lease() as original:
        data = dumps(proxy)  # while the handle is open and leased
        assert len(data) < 500
        copy, globals_ = pickled_globals(data)
        assert globals_ <= {
            ("xrdist.proxy", "HandleProxy"),
            ("h5py._hl.files", "File"),
            ("xrdist.locks", "NamedLock"),
        }
        assert copy == proxy
        assert copy is not proxy
        assert copy.lock == H5_LOCK
        global_cache.reset_info()
        with copy.lease() as shared:
            assert shared is original
            np.testing.assert_array_equal(shared["x"][:], expected_values(0))
    info = xrdist.cache_info()
    assert (info.hits, info.misses, info.opens, info.open_now) == (1, 0, 0, 1)


def test_proxy_made_for_writing_travels_as_append_and_never_truncates(tmp_path, global_cache):
    """A mode="w" proxy unpickles with mode="a"; reopening the copy after the cache was
    closed keeps the data written through the original and can write more."""
    path = str(tmp_path / "new.h5")
    (proxy,) = h5_proxies([path], mode="w")
    with proxy.lease() as h:
        h["x"] = expected_values(7)
    copy = pickle.loads(pickle.dumps(proxy))
    assert copy.mode == "a"
    assert cloudpickle.loads(cloudpickle.dumps(proxy)).mode == "a"
    assert (copy.opener, copy.path, copy.lock) == (proxy.opener, proxy.path, proxy.lock)

    xrdist.clear_cache()
    assert xrdist.cache_info().open_now == 0
    global_cache.reset_info()
    with copy.lease() as h:
        assert h.mode == "r+"
        np.testing.assert_array_equal(h["x"][:], expected_values(7))
        h["y"] = expected_values(8)
    assert xrdist.cache_info().opens == 1
    # The original "w" proxy, reopened in this process, does not truncate either.
    xrdist.clear_cache()
    with proxy.lease() as h:
        np.testing.assert_array_equal(h["x"][:], expected_values(7))
        np.testing.assert_array_equal(h["y"][:], expected_values(8))
    xrdist.clear_cache()
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["x", "y"]


def test_caching_file_manager_pickle_drops_default_lock_and_cache(make_h5, global_cache):
    """A CachingFileManager pickles without its default lock or its cache; the copy gets
    the default (per-file) lock again and shares the original's cached handle."""
    (path,) = make_h5(1)
    manager = xrdist.CachingFileManager(h5py.File, path, mode="r")
    try:
        original = manager.acquire()
        data = pickle.dumps(manager)
        assert len(data) < 500
        copy, globals_ = pickled_globals(data)
        assert ("xrdist.locks", "NamedLock") not in globals_
        assert copy._lock == xrdist.file_lock(path)
        global_cache.reset_info()
        with copy.acquire_context() as shared:
            assert shared is original
            np.testing.assert_array_equal(shared["x"][:], expected_values(0))
        info = xrdist.cache_info()
        assert (info.hits, info.opens) == (1, 0)
    finally:
        manager.close()

    # An injected cache holding an open h5py.File (which cannot be pickled) stays behind.
    cache = {}
    injected = xrdist.CachingFileManager(h5py.File, path, mode="r", cache=cache)
    try:
        np.testing.assert_array_equal(injected.acquire()["x"][:], expected_values(0))
        assert len(cache) == 1
        copy = pickle.loads(pickle.dumps(injected))
        assert copy._cache is None
        np.testing.assert_array_equal(copy.acquire()["x"][:], expected_values(0))
        copy.close()
    finally:
        injected.close()
    assert not cache


@pytest.mark.parametrize(
    "make_lock",
    [xrdist.file_lock, lambda path: xrdist.library_lock("hdf5")],
    ids=["file_lock", "library_lock"],
)
def test_caching_file_manager_pickle_keeps_explicit_lock(make_h5, global_cache, make_lock):
    """A non-default, picklable lock travels with a pickled CachingFileManager (by name) and
    the copy still reads."""
    (path,) = make_h5(1)
    lock = make_lock(path)
    manager = xrdist.CachingFileManager(h5py.File, path, mode="r", lock=lock)
    try:
        for dumps in (pickle.dumps, cloudpickle.dumps):
            copy, globals_ = pickled_globals(dumps(manager))
            assert ("xrdist.locks", "NamedLock") in globals_
            assert copy._lock == lock
            with copy.acquire_context() as f:
                np.testing.assert_array_equal(f["x"][:], expected_values(0))
    finally:
        manager.close()


# -- a real dask.distributed cluster --------------------------------------------------------

N_WORKERS = 2
N_FILES = 6
N_TASKS = 40


@pytest.fixture(scope="module")
def client():
    """Two worker processes with two threads each, shared by the cluster tests."""
    with (
        LocalCluster(
            n_workers=N_WORKERS,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.mark.timeout(120)
@pytest.mark.parametrize("library", ["hdf5", "netcdf"])
def test_cluster_tasks_read_correctly_and_reuse_worker_handles(client, make_h5, make_nc, library):
    """40 tasks on 2 worker processes read 6 real files through pickled proxies: every
    result is right, each worker opens each file at most once, and tasks on a worker
    reuse its handles (hits)."""
    if library == "hdf5":
        proxies, read = h5_proxies(make_h5(N_FILES)), proxy_lease_read
    else:
        proxies, read = nc_proxies(make_nc(N_FILES)), proxy_lease_read_locked
    client.run(xrdist.clear_cache)
    client.run(xrdist.reset_cache_info)

    which = [i % N_FILES for i in range(N_TASKS)]
    futures = [client.submit(read, proxies[i], pure=False) for i in which]
    results = client.gather(futures)
    for i, result in zip(which, results, strict=True):
        np.testing.assert_array_equal(result, expected_values(i))

    infos = client.run(xrdist.cache_info)
    assert len(infos) == N_WORKERS
    pids = {info.pid for info in infos.values()}
    assert len(pids) == N_WORKERS and os.getpid() not in pids
    opens = sum(info.opens for info in infos.values())
    hits = sum(info.hits for info in infos.values())
    misses = sum(info.misses for info in infos.values())
    assert 0 < opens <= N_FILES * N_WORKERS
    assert hits > 0
    assert hits + misses == N_TASKS  # one lease per task, each a hit or a miss
    assert opens == misses
    assert sum(info.open_errors + info.leased_now for info in infos.values()) == 0
    client.run(xrdist.clear_cache)
