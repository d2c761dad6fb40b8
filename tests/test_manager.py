"""The handle manager: leases, eviction, bounds, staleness, errors and statistics."""

from __future__ import annotations

import os
import threading
import time

import h5py
import numpy as np
import pytest
from conftest import expected_values

import xrdist
from xrdist import FileSpec, HandleManager


class CountingOpener:
    """Opens HDF5 files for real, counting the calls; optionally slow."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self._lock = threading.Lock()

    def __call__(self, path: str, mode: str = "r") -> h5py.File:
        with self._lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return h5py.File(path, mode)


def spec_for(path: str, opener=h5py.File, **kw) -> FileSpec:
    return FileSpec(opener, (path,), mode=kw.pop("mode", "r"), path=path, **kw)


def read_x(manager: HandleManager, path: str, opener=h5py.File) -> np.ndarray:
    with manager.lease(spec_for(path, opener)) as f:
        return f["x"][:]


@pytest.mark.parametrize("maxsize", [1, 2, 3, 1000])
def test_reads_are_correct_and_opens_match_cache_size(make_h5, no_leaks, maxsize):
    """Every read returns its file's data; a file is reopened only after eviction."""
    paths = make_h5(4)
    opener = CountingOpener()
    manager = HandleManager(maxsize)
    for _ in range(3):
        for i, path in enumerate(paths):
            np.testing.assert_array_equal(read_x(manager, path, opener), expected_values(i))
    info = manager.info()
    # Cycling over 4 files: an LRU smaller than 4 misses every time; otherwise 4 opens.
    assert opener.calls == (4 if maxsize >= 4 else 12)
    assert info.opens == opener.calls == info.misses
    assert info.hits == 12 - info.misses
    assert info.open_now == min(maxsize, 4) == info.peak_open
    assert info.closes == info.evictions == info.opens - info.open_now
    manager.clear()
    assert manager.info().open_now == 0


def test_eviction_never_closes_a_leased_handle(make_h5, no_leaks):
    """A handle leased by one thread stays open while another thread churns the cache,
    and is kept (as most recently used) when the lease ends."""
    paths = make_h5(5)
    manager = HandleManager(maxsize=1)
    leased, go = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def reader() -> None:
        with manager.lease(spec_for(paths[0])) as f:
            leased.set()
            assert go.wait(10)
            seen["valid"] = bool(f.id.valid)
            seen["data"] = f["x"][:]

    thread = threading.Thread(target=reader)
    thread.start()
    assert leased.wait(10)
    for path in paths[1:]:  # each of these evicts the previous idle handle
        read_x(manager, path)
    info = manager.info()
    assert info.leased_now == 1
    assert info.open_now == 1  # only the leased one: the idle bound is maxsize - leased = 0
    assert manager.is_open(spec_for(paths[0]))
    go.set()
    thread.join(10)
    assert seen["valid"] is True
    np.testing.assert_array_equal(seen["data"], expected_values(0))
    assert manager.is_open(spec_for(paths[0]))  # back in the LRU after its lease
    assert manager.info().open_now == 1
    manager.clear()


def test_bound_is_exceeded_only_by_leased_handles(make_h5, no_leaks):
    """With more leases than the bound, every leased handle stays open and the
    statistics report how far over the bound the cache is."""
    paths = make_h5(3)
    manager = HandleManager(maxsize=1)
    with manager.lease(spec_for(paths[0])) as a, manager.lease(spec_for(paths[1])) as b:
        with manager.lease(spec_for(paths[2])) as c:
            info = manager.info()
            assert (info.open_now, info.leased_now, info.over_bound) == (3, 3, 2)
            assert all(h.id.valid for h in (a, b, c))
        assert manager.info().open_now == 2  # c went back idle, over the bound: closed
    info = manager.info()
    assert (info.open_now, info.leased_now, info.over_bound) == (1, 0, 0)
    assert info.peak_open == 3
    manager.clear()


def test_a_handed_over_lease_holds_the_handle_until_it_ends(make_h5, no_leaks):
    """``hand_over`` inside a lease's block: the block ends without returning the
    handle, which stays open (and is not evicted) until the new lease ends, even in
    another thread; outside a block it is refused."""
    paths = make_h5(2)
    manager = HandleManager(maxsize=1)
    lease = manager.lease(spec_for(paths[0]))
    with lease as handle:
        held = lease.hand_over()
    with manager.lease(spec_for(paths[1])):
        assert handle.id.valid and manager.info().leased_now == 2
    ender = threading.Thread(target=held.__exit__, args=(None, None, None))
    ender.start()
    ender.join()
    assert manager.info().leased_now == 0
    with pytest.raises(RuntimeError, match="inside the with block"):
        lease.hand_over()
    manager.clear()


def test_close_while_leased_is_deferred(make_h5, no_leaks):
    """close() of a leased handle closes it when the lease ends, not before."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    with manager.lease(spec_for(path)) as f:
        manager.close(spec_for(path))
        assert f.id.valid
        assert not manager.is_open(spec_for(path))  # retired: new leases get a new one
        with manager.lease(spec_for(path)) as g:
            assert g is not f
            np.testing.assert_array_equal(g["x"][:], expected_values(0))
        np.testing.assert_array_equal(f["x"][:], expected_values(0))
    assert not f.id.valid
    info = manager.info()
    assert info.deferred_closes == 1
    assert info.open_now == 1  # g, idle
    manager.clear()
    assert not g.id.valid


def test_a_deferred_close_frees_its_place_in_the_bound(make_h5, no_leaks):
    """Once a handle closed while leased is closed at its lease's end, it no longer
    counts against maxsize: shrinking the cache to one keeps the one idle handle."""
    a, b = make_h5(2)
    manager = HandleManager(maxsize=2)
    with manager.lease(spec_for(a)):
        manager.close(spec_for(a))  # retired, closed when this lease ends
        read_x(manager, b)  # b, idle
    manager.resize(maxsize=1)
    assert manager.is_open(spec_for(b))
    assert manager.info().evictions == 0
    manager.clear()


def test_threads_leasing_one_missing_file_share_one_open(make_h5, no_leaks):
    """Concurrent leases of a file not yet open result in exactly one open."""
    (path,) = make_h5(1)
    opener = CountingOpener(delay=0.05)
    manager = HandleManager(maxsize=4)
    barrier = threading.Barrier(8)
    handles = []

    def lease_it() -> None:
        barrier.wait()
        with manager.lease(spec_for(path, opener)) as f:
            handles.append(f)
            time.sleep(0.01)

    threads = [threading.Thread(target=lease_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert opener.calls == 1
    assert len({id(h) for h in handles}) == 1
    info = manager.info()
    assert (info.misses, info.hits, info.opens) == (1, 7, 1)
    manager.clear()


def test_opens_of_different_files_run_in_parallel(make_h5, no_leaks):
    """A slow open of one file does not hold up the lease of another (the manager's
    lock is not held while opening)."""
    paths = make_h5(2)
    slow = CountingOpener(delay=1.0)
    manager = HandleManager(maxsize=4)
    started = threading.Event()

    def slow_lease() -> None:
        started.set()
        read_x(manager, paths[0], slow)

    thread = threading.Thread(target=slow_lease)
    thread.start()
    assert started.wait(5)
    time.sleep(0.05)
    t0 = time.monotonic()
    read_x(manager, paths[1])
    assert time.monotonic() - t0 < 0.5
    thread.join(10)
    manager.clear()


def test_write_mode_becomes_append_on_reopen(tmp_path, no_leaks):
    """A file opened with mode='w' is created once; reopening never truncates it."""
    path = str(tmp_path / "out.h5")
    manager = HandleManager(maxsize=2)
    spec = spec_for(path, mode="w")
    with manager.lease(spec) as f:
        f["x"] = np.arange(5)
    manager.close(spec)
    with manager.lease(spec) as f:  # reopened: must be "a", not "w"
        np.testing.assert_array_equal(f["x"][:], np.arange(5))
        f["y"] = np.ones(3)
    manager.clear()
    with h5py.File(path, "r") as f:
        assert set(f) == {"x", "y"}


def test_replaced_file_is_reopened(make_h5, tmp_path, no_leaks):
    """A cached handle whose file was replaced on disk is not used: the file is
    reopened and the new content read."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    np.testing.assert_array_equal(read_x(manager, path), expected_values(0))
    replacement = str(tmp_path / "new.h5")
    with h5py.File(replacement, "w") as f:
        f["x"] = expected_values(7)
    os.replace(replacement, path)
    np.testing.assert_array_equal(read_x(manager, path), expected_values(7))
    info = manager.info()
    assert (info.stale_reopens, info.opens, info.open_now) == (1, 2, 1)
    manager.clear()


def test_unverified_lease_gives_the_cached_handle_until_verified(make_h5, tmp_path, no_leaks):
    """lease(verify=False) hands out a cached handle without checking its file; verify()
    then finds it stale, retires it (closed when that lease ends), and the next lease
    reads the new file."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    read_x(manager, path)
    replacement = str(tmp_path / "new.h5")
    with h5py.File(replacement, "w") as f:
        f["x"] = expected_values(7)
    os.replace(replacement, path)
    with manager.lease(spec_for(path), verify=False) as f:
        np.testing.assert_array_equal(f["x"][:], expected_values(0))  # the old file
        assert manager.info().stale_reopens == 0
    lease = manager.lease(spec_for(path), verify=False)
    with lease:
        assert lease.verify() is False
        assert manager.info().open_now == 1  # retired, still open for this lease
    assert manager.info().open_now == 0
    np.testing.assert_array_equal(read_x(manager, path), expected_values(7))
    info = manager.info()
    assert (info.stale_reopens, info.opens, info.hits, info.misses) == (1, 2, 1, 2)
    with manager.lease(spec_for(path), verify=False) as _:
        pass
    lease = manager.lease(spec_for(path), verify=False)
    with lease:
        assert lease.verify() is True
    manager.clear()


def test_verify_of_a_lease_that_opened_the_file_takes_back_no_hit(make_h5, no_leaks):
    """verify() finding a stale handle takes back the hit its lease counted; a lease that
    opened the file counted a miss, not a hit, so none is taken back."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    lease = manager.lease(spec_for(path), verify=False)
    with lease:
        assert lease.opened
        with open(path, "ab") as f:  # a larger file: the handle is stale now
            f.write(b"0" * 16)
        assert lease.verify() is False
    info = manager.info()
    assert (info.hits, info.misses, info.stale_reopens) == (0, 1, 1)
    manager.clear()


def test_a_lease_whose_file_cannot_be_checked_is_not_left_leased(make_h5, no_leaks):
    """A cached file whose path became a folder: the lease raises, and the handle is
    neither left leased nor counted as a hit."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    read_x(manager, path)
    os.rename(path, path + ".old")
    os.mkdir(path)
    with pytest.raises(IsADirectoryError):
        read_x(manager, path)
    info = manager.info()
    assert (info.leased_now, info.open_now, info.hits) == (0, 0, 0)
    manager.clear()


def test_rewritten_file_is_reopened(make_h5, tmp_path, no_leaks):
    """A file rewritten in place (same inode, new size/mtime) is reopened."""
    (path,) = make_h5(1)
    ino = os.stat(path).st_ino
    manager = HandleManager(maxsize=4)
    read_x(manager, path)
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as f:
        f["x"] = expected_values(3)
        f["pad"] = np.zeros(1000)
    with open(other, "rb") as src, open(path, "r+b") as dst:  # same inode, new bytes
        dst.write(src.read())
        dst.truncate()
    assert os.stat(path).st_ino == ino
    np.testing.assert_array_equal(read_x(manager, path), expected_values(3))
    assert manager.info().stale_reopens == 1
    manager.clear()


def test_deleted_file_raises_naming_it(make_h5, no_leaks):
    """A cached handle whose file was deleted raises FileNotFoundError with the path,
    and the stale handle is closed."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    read_x(manager, path)
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="was deleted") as excinfo:
        read_x(manager, path)
    assert path in str(excinfo.value)
    info = manager.info()
    assert info.open_now == 0 and info.leased_now == 0


@pytest.mark.parametrize(
    ("make_bad", "error", "words"),
    [
        (lambda d: str(d / "missing.h5"), FileNotFoundError, "No such file"),
        (lambda d: str(d), IsADirectoryError, "is a directory"),
        (
            lambda d: (d / "text.h5").write_text("not hdf5") and str(d / "text.h5"),
            OSError,
            "signature",
        ),
    ],
    ids=["missing", "directory", "not-hdf5"],
)
def test_failed_open_names_the_path_and_caches_nothing(tmp_path, no_leaks, make_bad, error, words):
    """An opener that fails raises with the path in the message; nothing is cached."""
    path = make_bad(tmp_path)
    manager = HandleManager(maxsize=4)
    with pytest.raises(error, match=words) as excinfo:
        read_x(manager, path)
    assert repr(path) in str(excinfo.value)
    info = manager.info()
    assert (info.open_now, info.leased_now, info.open_errors, info.opens) == (0, 0, 1, 0)


def test_exception_inside_a_lease_releases_it(make_h5, no_leaks):
    """An error in the reader's code ends the lease; the handle stays usable."""
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    with pytest.raises(KeyError), manager.lease(spec_for(path)) as f:
        f["no-such-variable"]
    info = manager.info()
    assert (info.leased_now, info.open_now) == (0, 1)
    np.testing.assert_array_equal(read_x(manager, path), expected_values(0))
    assert manager.info().hits == 1
    manager.clear()


def test_a_lease_is_entered_once(make_h5, no_leaks):
    (path,) = make_h5(1)
    manager = HandleManager(maxsize=4)
    lease = manager.lease(spec_for(path))
    with lease, pytest.raises(RuntimeError, match="entered once"), lease:
        pass
    manager.clear()


def test_weight_bound_evicts_by_cost(make_h5, no_leaks):
    """With a weight bound, idle handles are evicted until the summed weight fits."""
    paths = make_h5(4)
    manager = HandleManager(maxsize=100, maxweight=25)
    for path in paths:
        with manager.lease(spec_for(path, weight=10)):
            pass
    info = manager.info()
    assert (info.open_now, info.weight_now) == (2, 20)
    manager.resize(maxsize=50)  # changing the count bound keeps the weight bound
    assert manager.info().maxweight == 25
    manager.clear()
    assert manager.info().weight_now == 0


def test_set_options_resizes_the_process_cache(make_h5, global_cache, no_leaks):
    """file_cache_maxsize applies to the process-wide manager, also as a context manager."""
    paths = make_h5(6)
    for path in paths:
        read_x(global_cache, path)
    assert global_cache.info().open_now == 6
    with xrdist.set_options(file_cache_maxsize=2):
        assert global_cache.info().open_now == 2
        assert global_cache.info().maxsize == 2
        for path in paths:
            read_x(global_cache, path)
        assert global_cache.info().open_now == 2
    assert global_cache.info().maxsize == xrdist.options.default_file_cache_maxsize()


def test_reset_info_zeroes_counters(make_h5, global_cache, no_leaks):
    paths = make_h5(2)
    for path in paths:
        read_x(global_cache, path)
    xrdist.reset_cache_info()
    info = xrdist.cache_info()
    assert (info.opens, info.misses, info.hits, info.open_now, info.peak_open) == (0, 0, 0, 2, 2)


@pytest.mark.stress
@pytest.mark.timeout(300)
def test_stress_random_leases_over_many_files(make_h5, no_leaks, stress_seconds):
    """Many threads lease and read random files among 200 with a cache of 8: no error,
    no wrong data, the bound holds up to leases, statistics add up, nothing leaks."""
    paths = make_h5(200, n=16)
    manager = HandleManager(maxsize=8)
    n_threads = 16
    errors: list[BaseException] = []
    reads = [0] * n_threads
    worst_over = [0]
    deadline = time.monotonic() + stress_seconds

    def work(k: int) -> None:
        rng = np.random.default_rng(k)
        try:
            while time.monotonic() < deadline:
                i = int(rng.integers(len(paths)))
                with manager.lease(spec_for(paths[i])) as f:
                    info = manager.info()
                    if info.open_now > max(info.maxsize, info.leased_now):
                        worst_over[0] = max(worst_over[0], info.open_now)
                    np.testing.assert_array_equal(f["x"][:], expected_values(i, 16))
                reads[k] += 1
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(stress_seconds + 60)
    assert not errors, errors[:3]
    assert worst_over[0] == 0
    info = manager.info()
    total = sum(reads)
    assert total > 100
    assert info.hits + info.misses == total
    assert info.opens == info.misses
    assert info.closes == info.opens - info.open_now
    assert info.leased_now == 0 and info.open_now <= 8
    print(f"\nstress: {total} leases by {n_threads} threads over {len(paths)} files, {info}")
    manager.clear()
