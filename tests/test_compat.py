"""xrdist.CachingFileManager behaves as xarray.backends.CachingFileManager."""

from __future__ import annotations

import gc
import pickle
import threading

import h5py
import netCDF4
import numpy as np
import pytest
import xarray as xr
from conftest import expected_values

import xrdist
from xrdist import CachingFileManager


class Opener:
    """Opens real HDF5 files and remembers every file it returned."""

    def __init__(self) -> None:
        self.opened: list[h5py.File] = []
        self.modes: list[str] = []

    def __call__(self, path: str, mode: str = "r") -> h5py.File:
        f = h5py.File(path, mode)
        self.opened.append(f)
        self.modes.append(mode)
        return f


@pytest.fixture(params=[1, 2, 3, None], ids=["lru1", "lru2", "lru3", "dict"])
def injected_cache(request):
    """An injected cache: an LRU of xarray's own, or a plain dict (unbounded)."""
    if request.param is None:
        return {}
    from xarray.backends.lru_cache import LRUCache

    return LRUCache(maxsize=request.param, on_evict=lambda k, v: v.close())


def test_injected_cache_holds_the_open_file(make_h5, injected_cache, no_leaks):
    """With ``cache=`` the open file lives in that mapping, as in xarray."""
    (path,) = make_h5(1)
    opener = Opener()
    manager = CachingFileManager(opener, path, cache=injected_cache)
    f = manager.acquire()
    assert f is manager.acquire()
    assert list(injected_cache.values()) == [f]
    np.testing.assert_array_equal(f["x"][:], expected_values(0))
    manager.close()
    assert not injected_cache
    assert not f.id.valid
    assert len(opener.opened) == 1


def test_injected_cache_shared_by_many_managers(make_h5, injected_cache, no_leaks):
    """Several managers in a bounded cache reopen files evicted by the others."""
    paths = make_h5(4)
    opener = Opener()
    managers = [CachingFileManager(opener, p, cache=injected_cache) for p in paths]
    for _ in range(2):
        for i, m in enumerate(managers):
            np.testing.assert_array_equal(m.acquire()["x"][:], expected_values(i))
    size = getattr(injected_cache, "maxsize", None) or 4
    assert len(injected_cache) == min(size, 4)
    assert len(opener.opened) == (4 if size >= 4 else 8)
    for m in managers:
        m.close()


def test_default_cache_is_xrdist_manager(make_h5, global_cache, no_leaks):
    (path,) = make_h5(1)
    opener = Opener()
    manager = CachingFileManager(opener, path)
    f = manager.acquire()
    assert f is manager.acquire()
    info = xrdist.cache_info()
    assert (info.opens, info.hits, info.open_now) == (1, 1, 1)
    manager.close()
    assert xrdist.cache_info().open_now == 0
    assert not f.id.valid


def test_acquire_context_holds_a_lease(make_h5, global_cache, no_leaks):
    """Unlike a plain acquire, the file stays open for the block even if evicted."""
    paths = make_h5(3)
    with xrdist.set_options(file_cache_maxsize=1):
        first = CachingFileManager(h5py.File, paths[0], mode="r")
        with first.acquire_context() as f:
            for p in paths[1:]:
                other = CachingFileManager(h5py.File, p, mode="r")
                other.acquire()
                other.close()
            assert f.id.valid
            assert xrdist.cache_info().leased_now == 1
        first.close()


@pytest.mark.parametrize("use_injected", [True, False], ids=["injected", "global"])
def test_acquire_context_closes_a_file_it_opened_on_error(make_h5, use_injected, no_leaks):
    (path,) = make_h5(1)
    cache = {} if use_injected else None
    opener = Opener()
    manager = CachingFileManager(opener, path, cache=cache)
    with pytest.raises(ValueError), manager.acquire_context():
        raise ValueError("reader failed")
    # xarray's rule, in both modes: a file opened for the failed block is closed
    assert not opener.opened[0].id.valid
    if use_injected:
        assert not cache
    else:
        assert xrdist.cache_info().open_now == 0 or not manager._is_open()
    with manager.acquire_context() as f:  # a cached file stays open after a failed block
        pass
    with pytest.raises(ValueError), manager.acquire_context():
        raise ValueError("reader failed again")
    assert f.id.valid
    manager.close()
    assert not f.id.valid


@pytest.mark.parametrize("use_injected", [True, False], ids=["injected", "global"])
def test_write_mode_becomes_append(tmp_path, use_injected, no_leaks):
    """mode='w' is used once; a reopen uses 'a' and keeps what was written."""
    path = str(tmp_path / "w.h5")
    opener = Opener()
    manager = CachingFileManager(opener, path, mode="w", cache={} if use_injected else None)
    manager.acquire()["x"] = np.arange(3)
    manager.close()
    np.testing.assert_array_equal(manager.acquire()["x"][:], np.arange(3))
    manager.close()
    assert opener.modes == ["w", "a"]
    assert "mode='a'" in repr(manager)


def test_repr_matches_xarray(tmp_path):
    path = str(tmp_path / "r.h5")
    kwargs = {"driver": "core"}
    ours = CachingFileManager(h5py.File, path, mode="r", kwargs=kwargs, manager_id="m")
    theirs = xr.backends.CachingFileManager(
        h5py.File, path, mode="r", kwargs=kwargs, manager_id="m"
    )
    assert repr(ours) == repr(theirs)


def test_pickling_drops_cache_and_default_lock(make_h5, no_leaks):
    """Pickled: opener, args, mode, kwargs, explicit lock, id. Not the cache or file."""
    (path,) = make_h5(1)
    cache: dict = {}
    manager = CachingFileManager(h5py.File, path, mode="r", cache=cache, manager_id="k")
    manager.acquire()
    clone = pickle.loads(pickle.dumps(manager))
    assert clone._cache is None and clone._use_default_lock
    np.testing.assert_array_equal(clone.acquire()["x"][:], expected_values(0))
    clone.close()
    manager.close()
    explicit = CachingFileManager(h5py.File, path, mode="r", lock=xrdist.file_lock(path))
    clone = pickle.loads(pickle.dumps(explicit))
    assert clone._lock == xrdist.file_lock(path) and not clone._use_default_lock


def test_del_closes_the_last_managers_file(make_h5, global_cache, no_leaks):
    (path,) = make_h5(1)
    manager = CachingFileManager(h5py.File, path, mode="r", manager_id="shared")
    twin = CachingFileManager(h5py.File, path, mode="r", manager_id="shared")
    f = manager.acquire()
    del manager
    gc.collect()
    assert f.id.valid  # the twin still refers to the file
    del twin
    gc.collect()
    assert not f.id.valid
    assert xrdist.cache_info().open_now == 0


def test_warn_for_unclosed_files(make_h5, global_cache, no_leaks):
    (path,) = make_h5(1)
    manager = CachingFileManager(h5py.File, path, mode="r")
    manager.acquire()
    with (
        xrdist.set_options(warn_for_unclosed_files=True),
        pytest.warns(RuntimeWarning, match="not already closed"),
    ):
        del manager
        gc.collect()


def test_xarray_netcdf4_store_runs_on_it(make_nc, global_cache, no_leaks):
    """xarray's own NetCDF4DataStore reads through xrdist.CachingFileManager."""
    paths = make_nc(3)
    for i, path in enumerate(paths):
        manager = CachingFileManager(netCDF4.Dataset, path, mode="r")
        store = xr.backends.NetCDF4DataStore(manager, lock=xrdist.library_lock("netcdf-c"))
        with xr.open_dataset(store) as ds:
            np.testing.assert_array_equal(ds["x"].values, expected_values(i))
            assert ds["x"].dims == ("n",)
    assert xrdist.cache_info().opens == 3


def test_threads_share_one_manager(make_h5, global_cache, no_leaks):
    """acquire_context from many threads on one manager: one open, correct data."""
    (path,) = make_h5(1)
    manager = CachingFileManager(h5py.File, path, mode="r")
    barrier = threading.Barrier(8)
    results = []

    def read() -> None:
        barrier.wait()
        with manager.acquire_context() as f:
            results.append(f["x"][:])

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 8
    for r in results:
        np.testing.assert_array_equal(r, expected_values(0))
    assert xrdist.cache_info().opens == 1
    manager.close()
