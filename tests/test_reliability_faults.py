"""Reliability under faults: files changed during a compute, a corrupt chunk.

(A worker killed mid-compute is in ``test_reliability_cluster.py``.)

* Files of a stack are deleted, truncated, replaced or overwritten (with the same or
  other contents) while a threaded compute reads them: the compute either raises an
  error that names the changed file, or returns exactly the reference values; never
  other values.
* A file is modified in place while a window of it is read: an error, never a mix of
  old and new values.
* One compressed chunk (or TIFF tile) is corrupted: the error names the file, the
  variable and the chunk, whichever library reads it, and everything else still reads.

The loops run for ``--soak-seconds`` (at least one round each).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import h5py
import netCDF4
import numpy as np
import pytest
import tifffile
import xarray as xr

import xrdist
from xrdist.array import FileChangedError, reader_threads
from xrdist.synthetic import write_stack

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(1200)]


# -- files changed while a compute reads them -------------------------------------------

N_FILES, SIZE, CHUNK = 40, 96, 32


def write_files(folder: Path, file_format: str, seed: int = 0) -> dict[str, np.ndarray]:
    """``N_FILES`` one-date files: ``v`` (int16, zlib chunks of ``CHUNK`` in netCDF-4)
    and ``flat`` (float32, contiguous); returns the values written."""
    rng = np.random.default_rng(seed)
    values = {
        "v": rng.integers(-1000, 1000, (N_FILES, SIZE, SIZE)).astype("i2"),
        "flat": rng.random((N_FILES, SIZE, SIZE)).astype("f4"),
    }
    folder.mkdir(parents=True)
    for i in range(N_FILES):
        nc_format = "NETCDF4" if file_format == "netcdf4" else "NETCDF3_64BIT_OFFSET"
        with netCDF4.Dataset(folder / f"f{i:03d}.nc", "w", format=nc_format) as nc:
            nc.createDimension("time", 1)  # not unlimited: "flat" stays contiguous
            nc.createDimension("y", SIZE)
            nc.createDimension("x", SIZE)
            t = nc.createVariable("time", "i4", ("time",))
            t.units = "days since 2020-01-01"
            t[:] = [i]
            options = (
                {"zlib": True, "chunksizes": (1, CHUNK, CHUNK)} if nc_format == "NETCDF4" else {}
            )
            nc.createVariable("v", "i2", ("time", "y", "x"), **options)[:] = values["v"][i : i + 1]
            nc.createVariable("flat", "f4", ("time", "y", "x"))[:] = values["flat"][i : i + 1]
    return values


def _offset_of(path: str, name: str) -> int:
    """Where the bytes of a contiguous variable of a netCDF-4 file start."""
    with h5py.File(path, "r") as f:
        return int(f[name].id.get_offset())


MUTATIONS = (
    "delete",
    "truncate",
    "replace-same",
    "replace-other",
    "overwrite-same",
    "overwrite-other",
    "scribble",
)


def mutate(kind: str, path: str, original: str, other: str) -> None:
    """Change ``path`` on disk: ``original`` holds its bytes, ``other`` another file's."""
    if kind == "delete":
        os.remove(path)
    elif kind == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif kind.startswith("replace"):  # a new file renamed over it (a new inode)
        shutil.copy(original if kind == "replace-same" else other, path + ".new")
        os.replace(path + ".new", path)
    elif kind.startswith("overwrite"):  # rewritten in place, as cp does
        shutil.copyfile(original if kind == "overwrite-same" else other, path)
    else:  # scribble: other values in place, same size (netCDF-3: bytes of the header on)
        offset = _offset_of(path, "flat") if h5py.is_hdf5(path) else os.path.getsize(path) // 2
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, os.urandom(4096), offset)
        finally:
            os.close(fd)


def change_later(
    kind: str,
    path: str,
    original: str,
    other: str,
    delay: float,
    finished: threading.Event,
    counts: dict[str, int],
) -> None:
    """In a thread: after ``delay`` s, change ``path``; count it if the compute was still
    running then."""
    time.sleep(delay)
    mutate(kind, path, original, other)
    if not finished.is_set():
        counts["mid_compute"] += 1


@pytest.mark.parametrize("file_format", ["netcdf4", "netcdf3"])
def test_files_changed_during_a_compute_raise_naming_them_or_read_right(
    tmp_path: Path, file_format: str, soak_seconds: float, figures: Any
) -> None:
    """Each round copies a fresh stack, starts a threaded compute of sums over time of
    a chunked and a contiguous variable (a handle cache of 8: files are reopened), and
    from another thread changes one random file in one of seven ways at a random moment
    of the compute. The compute raises an error naming that file, or its result equals
    the sums of the values written; another file is never blamed."""
    source = tmp_path / "source"
    values = write_files(source, file_format)
    expected = {name: v.astype("f8").sum(axis=0) for name, v in values.items()}
    other = str(source / "f000.nc")
    rng = np.random.default_rng(1)
    counts = {"rounds": 0, "raised": 0, "right": 0, "mid_compute": 0, "wrong": 0}
    by_kind: dict[str, int] = dict.fromkeys(MUTATIONS, 0)
    duration = None
    deadline = time.monotonic() + soak_seconds
    with xrdist.set_options(file_cache_maxsize=8), warnings.catch_warnings():
        warnings.simplefilter("ignore", xrdist.AmplificationWarning)  # contiguous "flat"
        while counts["rounds"] < len(MUTATIONS) or time.monotonic() < deadline:
            folder = tmp_path / f"round{counts['rounds']}-{duration is None}"
            shutil.copytree(source, folder)
            paths = sorted(str(p) for p in folder.glob("*.nc"))
            time.sleep(0.05)  # mtimes of the copies and of the change differ
            ds = xrdist.open_mfdataset(
                paths, chunks={"time": -1, "y": CHUNK, "x": CHUNK}, strategy="direct"
            )
            sums = ds[["v", "flat"]].astype("f8").sum("time")
            if duration is None:  # the first round is the reference, unchanged
                start = time.monotonic()
                got = sums.compute(scheduler="threads")
                duration = time.monotonic() - start
                for name in expected:
                    np.testing.assert_array_equal(got[name].values, expected[name])
                xrdist.clear_cache()
                continue
            kind = MUTATIONS[counts["rounds"] % len(MUTATIONS)]
            target = int(rng.integers(1, N_FILES))
            delay = float(rng.uniform(0, 1.5 * duration))  # mostly mid-compute
            finished = threading.Event()
            original = str(source / Path(paths[target]).name)
            changer = threading.Thread(
                target=change_later,
                args=(kind, paths[target], original, other, delay, finished, counts),
            )
            changer.start()
            try:
                got = sums.compute(scheduler="threads")
            except Exception as err:
                finished.set()
                counts["raised"] += 1
                message = str(err)
                assert isinstance(err, OSError | ValueError), repr(err)
                assert paths[target] in message, (kind, message)
                assert not any(p in message for p in paths if p != paths[target]), message
            else:
                finished.set()
                for name in expected:
                    if not np.array_equal(got[name].values, expected[name]):
                        counts["wrong"] += 1
                counts["right"] += 1
            changer.join()
            xrdist.clear_cache()
            by_kind[kind] += 1
            counts["rounds"] += 1
            shutil.rmtree(folder)
    assert counts["wrong"] == 0
    figures.unit, figures.operations = "computes", counts["rounds"]
    figures.files = N_FILES * (counts["rounds"] + 1)
    figures.threads = 1 + 2 + reader_threads()
    figures.faults = sum(by_kind.values())
    figures.failures = counts["wrong"]
    figures.notes.update(
        raised=counts["raised"], right=counts["right"], changed_mid_compute=counts["mid_compute"]
    )


def overwrite_tail(path: str, offset: int, data: bytes, delay: float) -> None:
    """In a thread: after ``delay`` s, write ``data`` in place at ``offset``."""
    time.sleep(delay)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def test_a_file_modified_in_place_during_a_read_is_an_error_not_mixed_values(
    tmp_path: Path, soak_seconds: float, figures: Any
) -> None:
    """A 48 MiB contiguous variable is read (one window) while another thread writes
    other values over its last quarter, in place, a few milliseconds into the read: the
    read raises a FileChangedError naming the file, or returns the values written
    before; never a mix. (Without the check after each read, most rounds return a
    mix.)"""
    n = 12 * 2**20
    path = str(tmp_path / "big.nc")
    rng = np.random.default_rng(2)
    counts = {"rounds": 0, "raised": 0, "during": 0, "right": 0, "wrong": 0}
    tail = np.ones(n // 4, "f4").tobytes()
    deadline = time.monotonic() + soak_seconds / 2
    while counts["rounds"] < 10 or time.monotonic() < deadline:
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("n", n)
            nc.createVariable("v", "f4", ("n",))[:] = np.zeros(n, "f4")
        offset = _offset_of(path, "v")
        time.sleep(0.02)  # the write's modification time differs from the file's
        ds = xr.open_dataset(path, engine="xrdist")
        writer = threading.Thread(
            target=overwrite_tail,
            args=(path, offset + 3 * n, tail, float(rng.uniform(0, 0.01))),
        )
        writer.start()
        try:
            got = ds.v.values
        except FileChangedError as err:  # before the read, or (mostly) during it
            assert path in str(err), err
            counts["raised"] += 1
            counts["during"] += "while variable 'v' was being read" in str(err)
        else:
            counts["right" if not got.any() else "wrong"] += 1
        writer.join()
        ds.close()
        counts["rounds"] += 1
    assert counts["wrong"] == 0, counts
    figures.unit, figures.operations, figures.files = "reads", counts["rounds"], counts["rounds"]
    figures.threads, figures.faults, figures.failures = 2, counts["rounds"], counts["wrong"]
    figures.notes.update(
        raised=counts["raised"], raised_mid_read=counts["during"], right=counts["right"]
    )


# -- a corrupt compressed chunk ----------------------------------------------------------

CORRUPT = (0, 1, 1)  # the chunk (time, y, x) spoiled in one file


def write_two_variable_stack(folder: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Six one-date netCDF-4 files with two zlib-chunked variables of 160 x 160 float32
    (above the size read with the metadata: the chunks are read when computed)."""
    rng = np.random.default_rng(5)
    values = {n: rng.random((6, 160, 160)).astype("f4") for n in ("refl", "qa")}
    folder.mkdir(parents=True)
    paths = []
    for i in range(6):
        path = str(folder / f"s{i}.nc")
        ds = xr.Dataset(
            {n: (("time", "y", "x"), v[i : i + 1]) for n, v in values.items()},
            coords={"time": [np.datetime64("2024-01-01") + np.timedelta64(i, "D")]},
        )
        enc = {"zlib": True, "chunksizes": (1, 80, 80)}
        ds.to_netcdf(path, engine="netcdf4", encoding=dict.fromkeys(values, enc))
        paths.append(path)
    return paths, values


def spoil_chunk(path: str, name: str, where: tuple[int, ...]) -> None:
    """Overwrite the middle of one stored chunk of ``name`` with other bytes."""
    with h5py.File(path, "r") as f:
        dset = f[name]
        offset = tuple(w * c for w, c in zip(where, dset.chunks, strict=True))
        info = dset.id.get_chunk_info_by_coord(offset)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset + info.size // 3)
        f.write(bytes(range(256))[: info.size // 3])


@pytest.mark.parametrize(
    "how",
    ["byte-ranges", "h5py", "netcdf-c"],
    ids=["auto-byte-ranges", "h5py-without-byte-ranges", "netcdf-c"],
)
def test_a_corrupt_chunk_is_named_and_the_rest_still_reads(
    tmp_path: Path, how: str, figures: Any
) -> None:
    """A chunk of ``refl`` spoiled in one file: computing ``refl`` raises an OSError that
    names the file, the variable and the chunk, whichever library reads it; windows
    that avoid the chunk, and ``qa`` of the same file, read the values written."""
    paths, values = write_two_variable_stack(tmp_path / "stack")
    spoil_chunk(paths[3], "refl", CORRUPT)
    library = "netcdf4" if how == "netcdf-c" else "auto"
    with xrdist.set_options(byte_range_reads=how == "byte-ranges"):
        ds = xrdist.open_mfdataset(paths, library=library, chunks={"time": -1, "y": 80, "x": 80})
        with pytest.raises(OSError) as caught:
            ds.refl.compute()
        message = str(caught.value)
        assert paths[3] in message and "'refl'" in message, message
        assert f"chunk {CORRUPT}" in message, message
        np.testing.assert_array_equal(ds.qa.values, values["qa"])
        lazy = xrdist.open_mfdataset(paths, library=library)  # windows read as indexed
        np.testing.assert_array_equal(lazy.refl[:, :80, :].values, values["refl"][:, :80, :])
        np.testing.assert_array_equal(lazy.refl[:3, 80:, 80:].values, values["refl"][:3, 80:, 80:])
    figures.unit, figures.operations, figures.files, figures.faults = "computes", 4, 6, 1


def test_a_corrupt_cog_tile_is_named_and_the_rest_still_reads(tmp_path: Path, figures: Any) -> None:
    """One tile of one COG spoiled: the error names the file, ``band_data`` and the tile;
    the other tiles and the other files read the values written."""
    paths = write_stack(tmp_path / "cogs", dates=4, size=128, tile=64, file_format="cog")
    truth = np.stack([tifffile.imread(p) for p in paths])
    with tifffile.TiffFile(paths[2]) as tif:
        page = tif.pages[0]
        offset, size = page.dataoffsets[3], page.databytecounts[3]
    with open(paths[2], "r+b") as f:
        f.seek(offset + size // 3)
        f.write(bytes(range(256))[: size // 3])
    ds = xrdist.open_mfdataset(paths, mask_and_scale=False, chunks={"time": -1, "y": 64, "x": 64})
    with pytest.raises(OSError) as caught:
        ds.band_data.compute()
    message = str(caught.value)
    assert paths[2] in message and "'band_data', tile 3" in message, message
    lazy = xrdist.open_mfdataset(paths, mask_and_scale=False)  # windows read as indexed
    np.testing.assert_array_equal(lazy.band_data[:, 0, :64, :].values, truth[:, :64, :])
    np.testing.assert_array_equal(lazy.band_data[[0, 1, 3], 0].values, truth[[0, 1, 3]])
    figures.unit, figures.operations, figures.files, figures.faults = "computes", 3, 4, 1
