"""xrdist.open_mfdataset gives what xr.open_mfdataset(...).chunk(...) gives, in one task
per output chunk, reading every file it needs and no more."""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from pathlib import Path

import dask
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from xarray.core import indexing

import xrdist
from xrdist.description import clear_descriptions

NY, NX, TILE = 48, 40, 16


def write_stack(
    folder: Path,
    dates: int = 8,
    per_file: int = 1,
    tile: tuple[int, int] | None = (TILE, TILE),
    units_per_file: bool = True,
    seed: int = 0,
) -> list[str]:
    """One file per ``per_file`` dates: packed uint16 reflectance with clouds as fill,
    a static mask (no time), time units that differ per file, and bounds."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.meshgrid(np.linspace(0, 1, NY), np.linspace(0, 1, NX), indexing="ij")
    surface = 0.3 + 0.2 * np.sin(3 * yy) * np.cos(2 * xx)
    paths = []
    for f in range(dates // per_file):
        times = pd.date_range("2021-03-01", periods=dates, freq="5D")[
            f * per_file : (f + 1) * per_file
        ]
        refl = surface + rng.normal(0, 0.02, (per_file, NY, NX))
        refl[rng.random((per_file, NY, NX)) < 0.2] = np.nan  # clouds
        ds = xr.Dataset(
            {
                "refl": (("time", "y", "x"), refl, {"long_name": "reflectance"}),
                "mask": (("y", "x"), (surface > 0.3).astype("u1")),
                "time_bnds": (("time", "nv"), np.stack([times, times], axis=1)),
            },
            coords={"time": times, "y": np.arange(NY) * 10.0, "x": np.arange(NX) * 10.0},
            attrs={"title": "synthetic stack", "file": f},
        )
        ds.time.attrs["bounds"] = "time_bnds"
        units = f"days since {times[0]:%Y-%m-%d}" if units_per_file else "days since 2000-01-01"
        ds.time.encoding = {"units": units}
        ds.time_bnds.encoding = {"units": units}
        enc = {"dtype": "u2", "scale_factor": 1e-4, "_FillValue": 0}
        if tile is not None:
            enc.update(zlib=True, complevel=1, chunksizes=(1, *tile))
        ds.refl.encoding = enc
        path = folder / f"scene_{f:03d}.nc"
        ds.to_netcdf(path, engine="netcdf4")
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> list[str]:
    return write_stack(tmp_path_factory.mktemp("stack"))


def reference(paths, chunks=None, **kwargs) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ds = xr.open_mfdataset(paths, engine="netcdf4", data_vars="all", **kwargs)
    return ds.chunk(chunks) if chunks is not None else ds


CHUNKS = [
    {"time": -1, "y": TILE, "x": TILE},  # aligned: the satellite-median case
    {"time": -1, "y": 2 * TILE, "x": TILE},  # aligned, larger
    {"time": 2, "y": -1, "x": -1},  # along time
    {"time": -1, "y": 20, "x": 13},  # cuts tiles: planned as aligned read + rechunk
]


@pytest.mark.parametrize("chunks", CHUNKS, ids=["tiles", "tiles2", "time2", "unaligned"])
def test_identical_to_xarray_then_chunk(stack, chunks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xrdist.AmplificationWarning)
        ours = xrdist.open_mfdataset(stack, chunks=chunks)
    theirs = reference(stack, chunks)
    xr.testing.assert_identical(ours, theirs)
    assert ours.refl.chunks == theirs.refl.chunks
    xr.testing.assert_identical(ours.compute(), theirs.compute())
    for name in ["refl", "time"]:
        for key in ["dtype", "scale_factor", "_FillValue", "units", "chunksizes", "source"]:
            assert ours[name].encoding.get(key) == theirs[name].encoding.get(key), (name, key)


def test_lazy_without_chunks_is_identical(stack):
    ours = xrdist.open_mfdataset(stack)
    assert not ours.refl.chunks  # no dask
    xr.testing.assert_identical(ours, reference(stack).compute())


def test_median_over_time(stack):
    """The headline job: the same cloud-free median as xarray's, from one task per chunk."""
    chunks = {"time": -1, "y": TILE, "x": TILE}
    ours = xrdist.open_mfdataset(stack, chunks=chunks).refl.median("time")
    theirs = reference(stack, chunks).refl.median("time")
    xr.testing.assert_allclose(ours.compute(), theirs.compute())


def test_one_task_per_output_chunk(stack):
    """The graph has one read task per output chunk, plus a constant; the reference
    has per-file layers and a rechunk."""
    chunks = {"time": -1, "y": TILE, "x": TILE}
    ours = xrdist.open_mfdataset(stack, chunks=chunks).refl.data
    output_chunks = ours.npartitions
    assert output_chunks == 3 * 3
    assert output_chunks <= len(dict(ours.__dask_graph__())) <= output_chunks + 1
    theirs = reference(stack, chunks).refl.data
    assert len(dict(theirs.__dask_graph__())) > 2 * output_chunks


def test_every_file_read_once_per_task_with_a_large_cache(stack, global_cache):
    """Computing a stack opens each file once (the cache holds them all), and leases
    each file once per output chunk that spans it."""
    clear_descriptions()
    ds = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": TILE, "x": TILE})
    global_cache.clear()
    global_cache.reset_info()
    with dask.config.set(scheduler="threads"):
        ds.refl.compute()
    info = xrdist.cache_info()
    assert info.opens == len(stack)
    assert info.hits + info.misses == len(stack) * ds.refl.data.npartitions


def test_small_cache_does_not_thrash(tmp_path, global_cache):
    """With a cache smaller than the files a task reads, successive tasks visit the
    files in alternating directions, so each task reuses the handles the previous left:
    far fewer opens than files x tasks."""
    paths = write_stack(tmp_path / "s", dates=24)
    ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": TILE, "x": TILE})
    tasks = ds.refl.data.npartitions
    global_cache.clear()
    global_cache.reset_info()
    sequential = xrdist.set_options(file_cache_maxsize=8, read_threads=1)
    with sequential, dask.config.set(scheduler="sync"):
        ds.refl.compute()
    opens = xrdist.cache_info().opens
    assert opens <= len(paths) + (tasks - 1) * (len(paths) - 8)
    global_cache.clear()
    global_cache.reset_info()
    parallel = xrdist.set_options(file_cache_maxsize=8, read_threads=2)
    with parallel, dask.config.set(scheduler="threads"):
        ds.refl.compute()
    assert xrdist.cache_info().opens < len(paths) * tasks


def test_multiple_dates_per_file_and_nested(tmp_path):
    paths = write_stack(tmp_path / "m", dates=8, per_file=2)
    ours = xrdist.open_mfdataset(paths, combine="nested", concat_dim="time", chunks={"time": 3})
    theirs = reference(paths, {"time": 3}, combine="nested", concat_dim="time")
    xr.testing.assert_identical(ours, theirs)
    xr.testing.assert_identical(ours.compute(), theirs.compute())


def test_by_coords_orders_files_by_time(stack):
    shuffled = [stack[i] for i in np.random.default_rng(1).permutation(len(stack))]
    ours = xrdist.open_mfdataset(shuffled, chunks={})
    assert ours.indexes["time"].is_monotonic_increasing
    xr.testing.assert_identical(ours.compute(), reference(stack).compute())


def test_glob_and_xarray_entry(stack):
    pattern = str(Path(stack[0]).parent / "scene_*.nc")
    via_xarray = xr.open_dataset(pattern, engine="xrdist", chunks={})
    xr.testing.assert_identical(via_xarray.compute(), reference(stack).compute())
    assert via_xarray.refl.data.npartitions == 8 * 3 * 3  # chunks={}: the on-disk chunks
    across = xr.open_dataset(pattern, engine="xrdist", chunks={"time": -1, "y": 16, "x": 16})
    assert across.refl.data.npartitions == 9  # chunks spanning all files, one task each


def test_unaligned_request_warns_and_rechunks(stack):
    with pytest.warns(xrdist.AmplificationWarning, match=r"decodes 3\.33x .*Aligned chunks"):
        ds = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": 20, "x": 13})
    plan = ds.encoding["xrdist_plan"].variables["refl"]
    assert plan.strategy == "rechunk" and plan.rechunk_method == "tasks"
    assert plan.amplification == 1.0 and plan.requested_amplification > 1.5
    with pytest.warns(xrdist.AmplificationWarning, match="Reading directly"):
        direct = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": 20}, strategy="direct")
    assert direct.encoding["xrdist_plan"].variables["refl"].strategy == "direct"


def test_a_rechunk_moves_stored_values_and_decodes_after(stack):
    """Packed uint16 decoded to floats: the rechunk moves the uint16 values (half the
    memory and transfers) and each output chunk is decoded after it, bitwise as xarray
    decodes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xrdist.AmplificationWarning)
        ds = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": 20, "x": 13})
    data = ds.refl.data
    assert data.dtype.kind == "f" and ds.refl.encoding["dtype"] == np.dtype("u2")
    (rechunked,) = data.dask.dependencies[data.name]
    assert rechunked.startswith("rechunk-")
    block = dask.get(dict(data.__dask_graph__()), (rechunked, 0, 0, 0))
    assert block.dtype == np.dtype("u2")  # stored values crossed the rechunk
    want = reference(stack).refl.values
    np.testing.assert_array_equal(data.compute(scheduler="threads"), want)
    assert np.isnan(want).any()  # the fill value was decoded after the rechunk


def test_plan_is_inspectable(stack):
    plan = xrdist.plan(stack, chunks={"time": -1, "y": TILE, "x": TILE})
    text = repr(plan)
    assert f"{len(stack)} files" in text and "refl: direct" in text
    assert "amplification 1.00" in text
    assert "<table>" in plan._repr_html_()
    refl = plan.variables["refl"]
    assert refl.tasks == 9 and refl.max_files_per_task == len(stack)
    auto = xrdist.plan(stack, chunks="auto", max_mem=2**20)
    sizes = auto.variables["refl"].chunk_sizes()
    assert sizes["time"] == len(stack)
    assert sizes["y"] % TILE == 0 or sizes["y"] == NY
    assert auto.variables["refl"].memory_per_task <= 2**20


def test_pickled_stack_holds_no_data(stack):
    ds = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": TILE, "x": TILE})
    blob = pickle.dumps(ds)
    assert len(blob) < 50_000
    xr.testing.assert_identical(pickle.loads(blob).compute(), ds.compute())


# -- stacks that do not stack -------------------------------------------------------------


def _variant(folder: Path, make) -> list[str]:
    paths = write_stack(folder, dates=4)
    ds = xr.open_dataset(paths[2]).load()
    ds.close()
    make(ds).to_netcdf(paths[2])
    return paths


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda ds: ds.drop_vars("mask"), "lacks variables \\['mask'\\]"),
        (lambda ds: ds.assign(extra=ds.mask), "has extra variables \\['extra'\\]"),
        (
            lambda ds: ds.assign(mask=ds.mask.astype("i4")),
            "variable 'mask' has dtype int32, not uint8",
        ),
        (lambda ds: ds.isel(x=slice(0, 20)), "shape"),
        (
            lambda ds: _with_encoding(ds, "refl", scale_factor=2e-4),
            "variable 'refl' decodes differently: scale_factor=",
        ),
        (lambda ds: ds.assign_coords(y=ds.y + 1), "variable 'y' .* has different values"),
    ],
    ids=["missing-var", "extra-var", "dtype", "shape", "scale", "grid"],
)
def test_files_that_do_not_stack_are_named(tmp_path, make, words):
    paths = _variant(tmp_path / "bad", make)
    with pytest.raises(xrdist.StackError, match=words) as excinfo:
        xrdist.open_mfdataset(paths, combine="nested", concat_dim="time")
    assert paths[2] in str(excinfo.value) and paths[0] in str(excinfo.value)


def _with_encoding(ds: xr.Dataset, name: str, **encoding) -> xr.Dataset:
    ds[name].encoding.update(encoding)
    return ds


def test_duplicate_times_are_named(tmp_path):
    paths = write_stack(tmp_path / "a", dates=3)
    copy = Path(paths[1]).with_name("copy.nc")
    copy.write_bytes(Path(paths[1]).read_bytes())
    with pytest.raises(xrdist.StackError, match="duplicate or overlapping"):
        xrdist.open_mfdataset([*paths, str(copy)])


def test_no_files_match(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match the pattern"):
        xrdist.open_mfdataset(str(tmp_path / "*.nc"))
    with pytest.raises(IsADirectoryError, match=r"is a folder: pass a glob .*\*\.nc"):
        xrdist.open_mfdataset(tmp_path)


def test_paths_under_home_are_expanded_and_urls_refused(stack, monkeypatch):
    home = Path(stack[0]).parent
    monkeypatch.setenv("HOME", str(home))
    name = Path(stack[0]).name
    one = xr.open_dataset(f"~/{name}", engine="xrdist")
    assert one.encoding["source"] == str(Path(stack[0]).resolve())
    assert xrdist.open_mfdataset("~/*.nc").sizes["time"] == len(stack)
    with pytest.raises(ValueError, match="is a URL: xrdist reads local files"):
        xr.open_dataset("https://example.com/a.nc", engine="xrdist")
    with pytest.raises(ValueError, match="is a URL"):
        xrdist.open_mfdataset(["s3://bucket/a.nc", "s3://bucket/b.nc"])


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"library": "h5"}, ValueError, r"choose one of \('auto'"),
        ({"times": ["2000-01-01"] * 8}, ValueError, "times= labels files that have no 'time'"),
        ({"concat_dim": "times"}, xrdist.StackError, r"no dimension 'times' to order them by"),
        (
            {"concat_dim": "times", "combine": "nested"},
            xrdist.StackError,
            "the files have no dimension 'times', so they are stacked along a new one",
        ),
        ({"overview_level": 0}, ValueError, "overview_level= reads the overviews of a TIFF"),
        ({"chunks": "auto", "max_mem": "lots"}, ValueError, "max_mem='lots': give a positive"),
        ({"chunks": "auto", "max_mem": 0}, ValueError, "max_mem=0: give a positive"),
        (
            {"chunks": {"y": 8}, "amplification_threshold": 0.5},
            ValueError,
            "amplification_threshold=0.5: .* at least 1",
        ),
    ],
)
def test_bad_options_are_refused_saying_what_to_do(stack, options, error, words):
    with pytest.raises(error, match=words):
        xrdist.open_mfdataset(stack, **options)


def test_chunks_larger_than_the_max_mem_given_warn(stack):
    with pytest.warns(xrdist.MemoryBudgetWarning, match=r"(refl|mask): a task .* than max_mem"):
        xrdist.open_mfdataset(stack, chunks={"time": -1}, max_mem="16KiB")
    with warnings.catch_warnings():
        warnings.simplefilter("error", xrdist.MemoryBudgetWarning)
        xrdist.open_mfdataset(stack, chunks={"time": -1})  # no budget given: none to break
        xrdist.open_mfdataset(stack, chunks={"time": -1}, max_mem="1GiB")  # within it


def test_max_mem_takes_units_like_dask(stack):
    plan = xrdist.plan(stack, chunks="auto", max_mem="64MiB")
    assert plan.max_mem == 64 * 2**20


def test_tiff_and_netcdf_files_do_not_stack(stack, tmp_path):
    from xrdist.synthetic import write_stack as write_scenes

    tif = write_scenes(tmp_path / "cog", dates=2, size=32, tile=16, file_format="cog")[0]
    with pytest.raises(xrdist.StackError, match=r"the files mix TIFF \(.*\) and netCDF"):
        xrdist.open_mfdataset([tif, *stack[:2]], concat_dim="time")


def test_netcdf3_and_netcdf4_files_stack_as_in_xarray(tmp_path):
    """library="auto" reads netCDF-4 files with h5py and netCDF-3 ones with netCDF-C; a
    stack of both is read with netCDF-C, as xarray's netcdf4 engine reads it."""
    paths = []
    for i in range(4):
        ds = xr.Dataset(
            {"t2m": (("time", "y"), np.arange(3.0, dtype="f4")[None] + i)},
            coords={"time": [pd.Timestamp("2020-01-01") + pd.Timedelta(days=i)]},
        )
        paths.append(str(tmp_path / f"f{i}.nc"))
        ds.to_netcdf(paths[-1], format="NETCDF3_64BIT" if i % 2 else "NETCDF4")
    ours = xrdist.open_mfdataset(paths, chunks={"time": -1})
    assert ours.encoding["xrdist_plan"] is not None
    theirs = xr.open_mfdataset(paths, engine="netcdf4").load()
    xr.testing.assert_identical(ours.load(), theirs)


def test_times_stored_as_int32_and_int64_stack_as_in_xarray(tmp_path):
    """Writers differ in the integer type of the time axis; decoded, it is one dtype. A
    time without units (an integer once decoded) among dates does not stack."""
    paths = []
    for i, dtype in enumerate(["int32", "int64", "int32"]):
        ds = xr.Dataset(
            {"t2m": (("time", "y"), np.arange(3.0, dtype="f4")[None] + i)},
            coords={"time": [pd.Timestamp("2020-01-01") + pd.Timedelta(days=i)]},
        )
        paths.append(str(tmp_path / f"f{i}.nc"))
        ds.to_netcdf(paths[-1], encoding={"time": {"dtype": dtype, "units": "days since 2020"}})
    theirs = xr.open_mfdataset(paths, engine="netcdf4").load()
    xr.testing.assert_identical(xrdist.open_mfdataset(paths).load(), theirs)
    raw = xr.Dataset(
        {"t2m": (("time", "y"), np.zeros((1, 3), "f4"))}, coords={"time": ("time", [9])}
    )
    raw.to_netcdf(tmp_path / "raw.nc")
    mixed = [*paths, str(tmp_path / "raw.nc")]
    with pytest.raises(xrdist.StackError, match=r"raw\.nc.*'time' decodes to int64, not datetime"):
        xrdist.open_mfdataset(mixed, combine="nested", concat_dim="time")


def test_small_data_variables_that_differ_are_stacked_per_file(tmp_path):
    """A small variable without 'time' that differs between files is stacked with each
    file's own values, as xarray's data_vars='all' does."""
    paths = write_stack(tmp_path / "d", dates=4)
    for i, path in enumerate(paths):
        ds = xr.open_dataset(path).load()
        ds.close()
        ds["mask"] = ds.mask + i
        ds.to_netcdf(path)
    ours = xrdist.open_mfdataset(paths, chunks={})
    theirs = reference(paths, {})
    xr.testing.assert_identical(ours.compute(), theirs.compute())
    assert ours.mask.isel(time=3).max() == ours.mask.isel(time=0).max() + 3
    with pytest.raises(xrdist.StackError, match=r"'mask'.*data_vars='minimal'"):
        xrdist.open_mfdataset(paths, data_vars="minimal")


def test_overlapping_files_are_named(tmp_path):
    paths = write_stack(tmp_path / "o", dates=8, per_file=2)
    ds = xr.open_dataset(paths[1]).load()
    ds.close()
    shifted = ds.assign_coords(time=ds.time - np.timedelta64(5, "D"))  # overlaps file 0
    shifted.time_bnds.values[:] = shifted.time.values[:, None]
    shifted.to_netcdf(paths[1])
    with pytest.raises(xrdist.StackError, match="overlap"):
        xrdist.open_mfdataset(paths)


def test_empty_chunks_mean_on_disk_chunks_as_in_xarray(stack):
    ours = xrdist.open_mfdataset(stack, chunks={})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = xr.open_mfdataset(stack, engine="netcdf4", data_vars="all", chunks={})
    assert ours.refl.chunks == theirs.refl.chunks
    with pytest.raises(ValueError, match=r"dimensions \['lat'\] that the dataset does not"):
        xrdist.open_mfdataset(stack, chunks={"lat": 4})


def test_stack_described_on_another_machine_reads_here(stack):
    """A dask worker on another machine sees the same file (inode, size, mtime) on a
    mount with another device number: the read must go ahead, not call it changed."""
    ds = xrdist.open_mfdataset(stack, chunks=None)
    array = ds.refl.variable._data.array
    elsewhere = [dataclasses.replace(i, device=i.device + 1) for i in array.identities]
    moved = array.with_decoding((), array.dtype)
    moved.identities = tuple(elsewhere)
    np.testing.assert_array_equal(moved[indexing.BasicIndexer((slice(None),) * 3)], ds.refl.values)
    # a file that really changed is still refused
    changed = [dataclasses.replace(i, size=i.size + 1) for i in array.identities]
    moved.identities = tuple(changed)
    with pytest.raises(OSError, match=r"was modified \(size"):
        moved[indexing.BasicIndexer((slice(None),) * 3)]
