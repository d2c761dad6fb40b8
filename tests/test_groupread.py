"""Chunks read by the compiled loop (xrdist.groupread) give h5py's values bit for bit,
through a ChunkGroup and through stacks, and a chunk that fails is named."""

from __future__ import annotations

import os
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest
import xarray as xr

import xrdist
from xrdist import groupread
from xrdist.array import FileChangedError
from xrdist.byterange import CorruptChunkError, build_chunk_index
from xrdist.groupread import ChunkGroup, compiled_reads_unavailable
from xrdist.manager import get_manager

pytestmark = pytest.mark.timeout(120)

SHAPE, CHUNKS = (37, 23), (8, 7)  # edge chunks on both axes
FILTERS = {
    "deflate": {"compression": "gzip", "compression_opts": 4},
    "shuffle-deflate": {"compression": "gzip", "shuffle": True},
    "shuffle-deflate-fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "raw": {},
    "zstd-shuffle": {"compression": 32015, "compression_opts": (3,), "shuffle": True},
}
DTYPES = ["i1", "u1", ">i2", "<u2", ">i4", "<f4", ">f8", "u8", "<i8"]
BOXES = [(slice(0, 37), slice(0, 23)), (slice(3, 29), slice(2, 21)), (slice(8, 16), slice(7, 14))]


@pytest.fixture(autouse=True)
def _compiled_reads_from_the_first_read():
    with xrdist.set_options(compiled_reads=True):
        yield


def test_the_compiled_loop_loads_in_the_test_install():
    """The test install has numba: the compiled path is what the other tests check."""
    assert compiled_reads_unavailable() is None


class _Held:
    """A stand-in for a lease handed to a group: counts how often it is ended."""

    def __init__(self) -> None:
        self.ended = 0

    def __exit__(self, *exc: object) -> None:
        self.ended += 1


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    """Every filter combination x dtype, a variable with unwritten chunks, and one with
    a chunk stored with its deflate skipped (filter mask 1)."""
    import netCDF4  # noqa: F401  (puts its filter plugins on HDF5_PLUGIN_PATH for h5py)

    path = tmp_path_factory.mktemp("group") / "filters.h5"
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        for fname, kwargs in FILTERS.items():
            for dtype in DTYPES:
                values = (rng.standard_normal(SHAPE) * 100).astype(dtype)
                f.create_dataset(f"{fname}/{dtype}", data=values, chunks=CHUNKS, **kwargs)
        sparse = f.create_dataset(
            "sparse", shape=(30, 30), chunks=(10, 10), dtype=">f4", fillvalue=-1.5,
            compression="gzip", shuffle=True,
        )  # fmt: skip
        sparse[10:20, 0:10] = 42.0  # one chunk written; the rest unallocated
        masked = f.create_dataset(
            "masked", data=np.arange(400, dtype="<u2").reshape(20, 20), chunks=(10, 10),
            compression="gzip",
        )  # fmt: skip
        masked.id.write_direct_chunk((10, 10), np.full((10, 10), 9, "<u2").tobytes(), 1)
    return str(path)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_group_reads_every_filter_and_dtype_as_h5py(h5file, dtype):
    """Boxes of every filter combination, into outputs of their own dtype and float64,
    through one group: deflated chunks (shuffled or not) wait in the group, the others
    (fletcher32, zstd, raw, unallocated, filter skipped) are written at once; after
    ``flush`` every output holds h5py's values, every file's check ran once and its
    lease ended once."""
    expected, outs, held = [], [], []
    with h5py.File(h5file, "r") as f, ChunkGroup(most_files=3) as group:
        fd = f.id.get_vfd_handle()
        names = [f"{fname}/{dtype}" for fname in FILTERS] + ["sparse", "masked"]
        for name in names:
            dset = f[name]
            index = build_chunk_index(dset, h5file, name)
            boxes = BOXES if name not in ("sparse", "masked") else [(slice(5, 20), slice(0, 20))]
            for box in boxes:
                for out_dtype in (dset.dtype, np.dtype("f8")):
                    out = np.empty([s.stop - s.start for s in box], out_dtype)
                    assert index.read_box_into(fd, box, out, group) == dset.dtype
                    outs.append(out)
                    expected.append(dset[box].astype(out_dtype))
                    if group.unheld():
                        lease, checks = _Held(), []
                        group.hold(lease, lambda c=checks: c.append(1))
                        held.append((lease, checks))
        group.flush()
        assert len(group) == 0
    for out, values in zip(outs, expected, strict=True):
        assert out.tobytes() == values.tobytes()
    assert held and all((lease.ended, checks) == (1, [1]) for lease, checks in held)


def test_a_group_reads_when_its_files_reach_its_bound(h5file):
    """A group holds at most ``most_files`` files: the next hold reads the chunks and
    ends the leases (so a file is not kept open for a whole window)."""
    with h5py.File(h5file, "r") as f, ChunkGroup(most_files=2) as group:
        index = build_chunk_index(f["deflate/<u2"], h5file, "deflate/<u2")
        fd = f.id.get_vfd_handle()
        leases = [_Held() for _ in range(3)]
        for lease in leases:
            out = np.zeros((8, 7), "u2")
            index.read_box_into(fd, (slice(0, 8), slice(0, 7)), out, group)
            group.hold(lease, lambda: None)
        assert [lease.ended for lease in leases] == [1, 1, 0]
        assert len(group) == 1
        np.testing.assert_array_equal(out, 0)  # not read yet: the group is not flushed
    assert leases[2].ended == 1  # leaving the block ends what is held, reading nothing


def _stack(folder: Path, dtype: str, shuffle: bool, dates: int = 12) -> list[str]:
    """``dates`` files of one date of 272 x 260 values of ``dtype`` (above the size read
    with the metadata) in 32 x 32 chunks (edge chunks on both axes), deflated, with a
    fill value and a scale factor for integers."""
    rng = np.random.default_rng(7)
    paths = []
    for i in range(dates):
        values = (rng.standard_normal((1, 272, 260)) * 1000).astype(dtype)
        encoding = {"zlib": True, "shuffle": shuffle, "chunksizes": (1, 32, 32)}
        attrs = {}
        if np.dtype(dtype).kind in "iu":
            values[0, i : i + 5, 3] = 17  # the fill value
            encoding["_FillValue"] = 17
            attrs = {"scale_factor": 0.5, "add_offset": 3.0}
        ds = xr.Dataset({"v": (("time", "y", "x"), values, attrs)}, coords={"time": [i]})
        path = folder / f"s{i:02d}.nc"
        ds.to_netcdf(path, encoding={"v": encoding})
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("dtype", "shuffle"), [(">i2", True), ("<u2", False), ("<f4", True),
                                                (">f8", True), ("i1", True)])  # fmt: skip
def test_stacks_read_the_same_with_and_without_the_compiled_loop(
    tmp_path, monkeypatch, dtype, shuffle, threads
):
    """Windows of a stack (tile-aligned, across chunks, partial edge chunks, decoded
    and raw) read through the compiled loop are xarray's values, and the loop ran."""
    paths = _stack(tmp_path, dtype, shuffle, dates=6)
    calls = []
    read = groupread._Kernel.read
    monkeypatch.setattr(groupread._Kernel, "read", lambda *a: calls.append(1) or read(*a))
    with xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords") as expected:
        windows = [expected.v, expected.v.isel(y=slice(5, 170), x=slice(30, 250))]
        want = [w.values for w in windows]
    for chunks in ({"time": -1, "y": 32, "x": 32}, {"time": 5, "y": 100, "x": 130}):
        for compiled in (True, False):
            with xrdist.set_options(read_threads=threads, compiled_reads=compiled):
                ds = xrdist.open_mfdataset(paths, chunks=chunks)
                got = [ds.v.values, ds.v.isel(y=slice(5, 170), x=slice(30, 250)).values]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
    assert calls


def test_a_corrupt_chunk_in_a_stack_is_named(tmp_path):
    """A chunk that does not inflate, read by the compiled loop, raises the error that
    names its file, variable and chunk; every lease has ended after it."""
    paths = _stack(tmp_path, "<f4", True, dates=4)
    with h5py.File(paths[2], "r") as f:
        info = f["v"].id.get_chunk_info(4)  # chunk (0, 0, 4)
    raw = bytearray(Path(paths[2]).read_bytes())
    raw[info.byte_offset + 10 : info.byte_offset + 40] = b"\xff" * 30
    Path(paths[2]).write_bytes(bytes(raw))
    ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 32, "x": 32})
    match = r"s02.nc', variable 'v', chunk \(0, 0, 4\)"
    with pytest.raises(CorruptChunkError, match=match), dask.config.set(scheduler="sync"):
        ds.v.values  # noqa: B018
    assert get_manager().info().leased_now == 0  # no task is running now (sync)
    assert ds.v.isel(y=slice(32, 64)).values.shape == (4, 32, 260)  # other windows read


def test_a_file_truncated_after_opening_is_reported_as_changed(tmp_path):
    """A file cut short after the stack was opened: the compiled loop's read comes up
    short, and the error says the file changed (not that a chunk is corrupt)."""
    paths = _stack(tmp_path, "<f4", True, dates=4)
    with xrdist.set_options(read_threads=1):
        ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 32, "x": 32})
        ds.v.isel(y=slice(0, 32), x=slice(0, 32)).values  # noqa: B018  (handles cached)
        os.truncate(paths[1], os.path.getsize(paths[1]) - 4000)
        with pytest.raises(FileChangedError, match=r"s01\.nc"), dask.config.set(scheduler="sync"):
            ds.v.values  # noqa: B018
    assert get_manager().info().leased_now == 0


def test_a_group_holds_no_more_files_than_its_share_of_the_cache(tmp_path, monkeypatch):
    """With a cache of 3 handles and one reading thread, a window of 12 files never
    holds more than 3 leases at once, and all are returned after the read."""
    paths = _stack(tmp_path, "<u2", True)
    most = []
    hold = ChunkGroup.hold

    def counted(group, lease, check):
        most.append(get_manager().info().leased_now)
        hold(group, lease, check)

    monkeypatch.setattr(ChunkGroup, "hold", counted)
    with (
        xrdist.set_options(read_threads=1, file_cache_maxsize=3),
        dask.config.set(scheduler="sync"),
    ):
        ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 32, "x": 32})
        ds.v.values  # noqa: B018
    assert most and max(most) <= 3
    assert get_manager().info().leased_now == 0


def test_auto_loads_the_loop_once_the_process_has_read_enough(monkeypatch):
    """``compiled_reads="auto"``: windows are read in Python until the process has read
    ``AUTO_AFTER_BYTES`` of them, then the loop is loaded (once) and used, or at once
    where numba is loaded already; True loads it at the first read, False never."""
    loads = []

    def load():  # stands in for loading numba and compiling: counts the loads
        if groupread._kernel is None:
            loads.append(1)
            monkeypatch.setattr(groupread, "_kernel", object())
        return groupread._kernel

    monkeypatch.setattr(groupread, "_kernel", None)
    monkeypatch.setattr(groupread, "_window_bytes", 0)
    monkeypatch.setattr(groupread, "_loaded_kernel", load)
    monkeypatch.setattr(groupread, "AUTO_AFTER_BYTES", 250)
    monkeypatch.setattr(groupread, "_numba_in_use", lambda: False)
    with xrdist.set_options(compiled_reads=False):
        assert not groupread.use_compiled_reads(1000)
    with xrdist.set_options(compiled_reads="auto"):
        assert [groupread.use_compiled_reads(100) for _ in range(4)] == [False, False, True, True]
    assert loads == [1]
    monkeypatch.setattr(groupread, "_kernel", None)
    monkeypatch.setattr(groupread, "_window_bytes", 0)
    monkeypatch.setattr(groupread, "_numba_in_use", lambda: True)  # numbagg loaded it
    with xrdist.set_options(compiled_reads="auto"):
        assert groupread.use_compiled_reads(1)
    assert loads == [1, 1]
    monkeypatch.setattr(groupread, "_kernel", None)
    with xrdist.set_options(compiled_reads=True):
        assert groupread.use_compiled_reads(1)
    assert loads == [1, 1, 1]


def _loop_loaded() -> bool:
    return groupread._kernel is not None


@pytest.mark.timeout(180)
def test_worker_processes_of_a_cluster_read_with_the_loop(tmp_path):
    """On a real ``distributed.LocalCluster`` with worker processes told
    ``compiled_reads=True``: each worker loads the loop (from numba's cache, or
    compiling it) and the stack's values are xarray's."""
    from distributed import Client, LocalCluster

    paths = _stack(tmp_path, "<u2", True, dates=6)
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
                     silence_logs=40) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.run(xrdist.set_options, compiled_reads=True)
        ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 64, "x": 64})
        got = client.compute(ds.v).result()
        assert all(client.run(_loop_loaded).values())
        assert all(i.leased_now == 0 for i in client.run(xrdist.cache_info).values())
    with xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords") as expected:
        np.testing.assert_array_equal(got.values, expected.v.values)
