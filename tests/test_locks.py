"""Locks of the right scope: per file (by canonical path) and per native library."""

from __future__ import annotations

import pickle
import threading

import pytest

from xrdist.locks import HDF5, NETCDF_C, NamedLock, file_lock, library_lock


def held_elsewhere(lock: NamedLock) -> bool:
    """True if another thread cannot take ``lock`` right now."""
    result = []

    def try_it() -> None:
        got = lock.acquire(blocking=False)
        result.append(got)
        if got:
            lock.release()

    thread = threading.Thread(target=try_it)
    thread.start()
    thread.join(5)
    return not result[0]


def test_one_lock_per_file_whatever_the_spelling(tmp_path, monkeypatch):
    """Relative, absolute and symlinked spellings of one file name one lock."""
    target = tmp_path / "data.nc"
    target.write_bytes(b"")
    link = tmp_path / "link.nc"
    link.symlink_to(target)
    monkeypatch.chdir(tmp_path)
    spellings = [file_lock("data.nc"), file_lock(target), file_lock(link)]
    assert len(set(spellings)) == 1
    with spellings[0]:
        assert all(held_elsewhere(lock) for lock in spellings)
    assert not any(held_elsewhere(lock) for lock in spellings)


def test_locks_of_different_files_are_independent(tmp_path):
    a, b = file_lock(tmp_path / "a.nc"), file_lock(tmp_path / "b.nc")
    with a:
        assert held_elsewhere(a)
        assert not held_elsewhere(b)


def test_library_locks_are_process_wide_and_distinct():
    """h5py's HDF5 and netCDF-C are separate libraries: separate locks."""
    assert library_lock(HDF5) == library_lock(HDF5)
    with library_lock(NETCDF_C):
        assert held_elsewhere(library_lock(NETCDF_C))
        assert not held_elsewhere(library_lock(HDF5))


def test_named_locks_are_reentrant():
    lock = library_lock(NETCDF_C)
    with lock, lock:
        assert held_elsewhere(lock)
    assert not held_elsewhere(lock)


def test_named_locks_pickle_by_name(tmp_path):
    """A pickled lock is its name (tens of bytes) and means the same lock again."""
    lock = file_lock(tmp_path / "a.nc")
    data = pickle.dumps(lock)
    assert len(data) < 200
    clone = pickle.loads(data)
    assert clone == lock
    with lock:
        assert held_elsewhere(clone)


def test_release_by_a_thread_that_does_not_hold_it_fails_cleanly():
    lock = library_lock("test-foreign-release")
    lock.acquire()
    errors = []

    def foreign() -> None:
        try:
            lock.release()
        except RuntimeError as err:
            errors.append(err)

    thread = threading.Thread(target=foreign)
    thread.start()
    thread.join(5)
    assert errors
    lock.release()  # still held by us, and releasable
    assert not held_elsewhere(lock)


def test_release_of_unheld_lock_raises():
    with pytest.raises(RuntimeError, match="un-acquired"):
        library_lock("test-unheld").release()
