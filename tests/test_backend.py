"""engine="xrdist" gives what engine="netcdf4" gives, lazily, safely under threads."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr

import xrdist
from xrdist.array import FileChangedError
from xrdist.backend import XrdistBackendEntrypoint
from xrdist.description import clear_descriptions, description_cache_info

ATTRS = {
    "title": "corpus",
    "int_attr": np.int32(7),
    "float_attr": 2.5,
    "int_list": [1, 2, 3],
    "float_array": np.array([0.5, 1.5], dtype="f4"),
    "str_list": ["a", "bc"],
    "int8_attr": np.int8(-3),
    "uint16_attr": np.uint16(9),
}


def corpus_dataset() -> xr.Dataset:
    """Every dtype, fill values, packing, times, strings, scalars and empty dims."""
    rng = np.random.default_rng(0)
    time = pd.date_range("2001-01-01", periods=6, freq="D")
    ds = xr.Dataset(coords={"time": time, "y": np.arange(5.0), "x": np.arange(4)})
    for dtype in ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f4", "f8"]:
        ds[f"v_{dtype}"] = (("time", "y", "x"), (rng.random((6, 5, 4)) * 100).astype(dtype))
    ds["with_nan"] = ds["v_f4"].where(ds["v_f4"] > 20)
    ds["packed"] = (("time", "y"), rng.random((6, 5)) * 40 - 10)
    ds["packed"].encoding = {
        "dtype": "int16",
        "scale_factor": 0.01,
        "add_offset": 5.0,
        "_FillValue": -9999,
    }
    ds["packed"][0, 0] = np.nan
    ds["missing"] = (("y",), np.array([1.0, -1.0, 3.0, 4.0, -1.0]), {"missing_value": -1.0})
    ds["flags"] = (("x",), np.array([True, False, True, True]))
    ds["vlen_str"] = (("x",), np.array(["a", "bcd", "", "é"], dtype=object))
    ds["char_str"] = (("y",), np.array([b"ab", b"c", b"def", b"", b"g"]))
    ds["char_str"].encoding = {"dtype": "S1"}
    ds["scalar"] = ((), 3.25, {"units": "m"})
    ds["empty"] = (("zero",), np.array([], dtype="f8"))
    ds["duration"] = (("time",), pd.to_timedelta(np.arange(6), "h"))
    ds["time_bnds"] = (("time", "nv"), np.stack([time.values, time.values], axis=1))
    ds["time"].attrs["bounds"] = "time_bnds"
    ds["time"].encoding["units"] = "days since 2001-01-01"
    ds["zlib_chunked"] = (("time", "y", "x"), rng.random((6, 5, 4)))
    ds["zlib_chunked"].encoding = {
        "zlib": True,
        "complevel": 4,
        "shuffle": True,
        "fletcher32": True,
        "chunksizes": (2, 5, 2),
    }
    ds["chunked_plain"] = (("time", "y", "x"), rng.random((6, 5, 4)).astype("f4"))
    ds["chunked_plain"].encoding = {"chunksizes": (1, 5, 4)}
    ds["lon"] = (("x",), np.linspace(0, 3, 4), {"standard_name": "longitude"})
    ds = ds.set_coords("lon")
    ds["v_f8"].attrs.update({"coordinates": "lon", "long_name": "eight-byte floats"})
    ds.attrs.update(ATTRS)
    return ds


def calendar_dataset(calendar: str) -> xr.Dataset:
    times = xr.date_range("2000-02-27", periods=5, freq="D", calendar=calendar, use_cftime=True)
    return xr.Dataset({"v": (("time",), np.arange(5.0))}, coords={"time": times})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Files written by xarray's own engines, in every layout the tests compare."""
    folder = tmp_path_factory.mktemp("corpus")
    files = {}
    ds = corpus_dataset()
    files["netcdf4"] = folder / "netcdf4.nc"
    ds.to_netcdf(files["netcdf4"], engine="netcdf4", unlimited_dims=["time"])
    files["h5netcdf"] = folder / "h5netcdf.nc"
    ds.drop_vars(["char_str"]).to_netcdf(files["h5netcdf"], engine="h5netcdf")
    classic = ds.drop_vars(["vlen_str", "v_u2", "v_u4", "v_i8", "v_u8", "empty", "duration"])
    classic = classic.drop_vars(["time_bnds"]).assign_coords(time=ds.time)
    for v in classic.variables.values():
        v.encoding = {
            k: e
            for k, e in v.encoding.items()
            if k in ("dtype", "scale_factor", "add_offset", "_FillValue")
        }
    classic.attrs = {"title": "classic", "n": np.int32(3), "vals": [1.5, 2.5]}
    files["netcdf3"] = folder / "classic.nc"
    classic.to_netcdf(files["netcdf3"], format="NETCDF3_64BIT", engine="netcdf4")
    files["netcdf3_classic"] = folder / "classic32.nc"
    classic.to_netcdf(files["netcdf3_classic"], format="NETCDF3_CLASSIC", engine="netcdf4")
    for calendar in ["noleap", "360_day", "julian", "all_leap", "proleptic_gregorian"]:
        files[f"cal_{calendar}"] = folder / f"cal_{calendar}.nc"
        calendar_dataset(calendar).to_netcdf(files[f"cal_{calendar}"], engine="netcdf4")
    groups = folder / "groups.nc"
    xr.Dataset({"top": ("a", [1, 2])}, attrs={"level": "root"}).to_netcdf(groups)
    xr.Dataset({"inner": ("b", [3.0, 4.0, 5.0])}, attrs={"level": "g1"}).to_netcdf(
        groups, group="g1", mode="a"
    )
    xr.Dataset({"deep": ("a", [6, 7])}).to_netcdf(groups, group="g1/g2", mode="a")
    files["groups"] = groups
    return files


def same_encoding(a: dict, b: dict) -> bool:
    """Equal encodings, NaN fill values included."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, float | np.floating) and isinstance(y, float | np.floating):
            if not (x == y or (np.isnan(x) and np.isnan(y))):
                return False
        elif x != y:
            return False
    return True


LIBRARIES = ["auto", "h5py", "netcdf4"]


def assert_same_as_netcdf4(path: Path, library: str = "auto", **kwargs) -> None:
    ours = xr.open_dataset(path, engine="xrdist", library=library, **kwargs)
    theirs = xr.open_dataset(path, engine="netcdf4", **kwargs)
    xr.testing.assert_identical(ours, theirs)
    assert ours.encoding == theirs.encoding
    for name in theirs.variables:
        assert same_encoding(ours[name].encoding, theirs[name].encoding), name
    xr.testing.assert_identical(ours.load(), theirs.load())
    ours.close()
    theirs.close()


CORPUS_FILES = [
    "netcdf4",
    "h5netcdf",
    "netcdf3",
    "netcdf3_classic",
    "cal_noleap",
    "cal_360_day",
    "cal_julian",
    "cal_all_leap",
    "cal_proleptic_gregorian",
]


@pytest.mark.parametrize("name", CORPUS_FILES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"chunks": {}},
        {"mask_and_scale": False},
        {"decode_times": False},
        {"decode_cf": False},
        {"concat_characters": False, "decode_coords": False},
        {"drop_variables": ["v_i1", "scalar"]},
    ],
    ids=["default", "chunks", "no-mask", "no-times", "no-cf", "raw-strings", "drop"],
)
@pytest.mark.parametrize("library", LIBRARIES)
def test_identical_to_netcdf4_engine(corpus, name, options, library):
    if library == "h5py" and name.startswith("netcdf3"):
        pytest.skip("h5py reads HDF5 only; library='auto' reads netCDF-3 with netCDF-C")
    assert_same_as_netcdf4(corpus[name], library=library, **options)


@pytest.mark.parametrize("name", CORPUS_FILES)
@pytest.mark.parametrize("library", LIBRARIES)
def test_reopened_from_the_disk_cache_identical(corpus, name, library):
    """A reopen unpickles the decoded dataset the first open kept on disk: it is still
    identical to engine="netcdf4", attributes, encodings and values."""
    from xrdist import persist

    if library == "h5py" and name.startswith("netcdf3"):
        pytest.skip("h5py reads HDF5 only")
    # options of this test only, including one of xarray's time coders
    options = {"library": library, "decode_times": xr.coders.CFDatetimeCoder(use_cftime=True)}
    xr.open_dataset(corpus[name], engine="xrdist", **options).close()
    before = persist.loaded[persist.DATASET]
    assert_same_as_netcdf4(corpus[name], **options)
    assert persist.loaded[persist.DATASET] == before + 1


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("group", [None, "g1", "g1/g2", "/g1/g2"])
def test_groups_identical(corpus, group, library):
    assert_same_as_netcdf4(corpus["groups"], library=library, group=group)


@pytest.mark.parametrize("library", LIBRARIES)
def test_missing_group_names_the_file_and_the_groups(corpus, library):
    with pytest.raises(OSError, match=r"group 'nope' not found in .*groups.nc.*\['g1'\]"):
        xr.open_dataset(corpus["groups"], engine="xrdist", group="nope", library=library)


def test_indexing_reads_windows(corpus):
    """Basic, outer and vectorized indexing agree with the netcdf4 engine."""
    ours = xr.open_dataset(corpus["netcdf4"], engine="xrdist")["zlib_chunked"]
    theirs = xr.open_dataset(corpus["netcdf4"], engine="netcdf4")["zlib_chunked"]
    selections = [
        {"time": 2},
        {"time": slice(1, 5, 2), "x": slice(None, None, -1)},
        {"time": [0, 3, 5], "x": [1, 3]},
        {"time": xr.DataArray([0, 2], dims="p"), "y": xr.DataArray([1, 4], dims="p")},
    ]
    for sel in selections:
        xr.testing.assert_identical(ours.isel(sel).load(), theirs.isel(sel).load())


def test_encoding_carries_on_disk_chunks(corpus):
    ds = xr.open_dataset(corpus["netcdf4"], engine="xrdist")
    enc = ds["zlib_chunked"].encoding
    assert enc["chunksizes"] == (2, 5, 2)
    assert enc["preferred_chunks"] == {"time": 2, "y": 5, "x": 2}
    assert enc["zlib"] and enc["shuffle"] and enc["fletcher32"]
    assert enc["source"] == str(corpus["netcdf4"])
    auto = xr.open_dataset(corpus["netcdf4"], engine="xrdist", chunks="auto")
    assert auto["zlib_chunked"].data.chunksize[1:] == (5, 4)  # whole multiples of 5, 2


def test_pickled_dataset_holds_no_data_and_reads_elsewhere(tmp_path):
    """An unloaded dataset pickles to its description, not its data, and reads in a new
    process."""
    path = tmp_path / "big.nc"
    data = np.arange(500_000, dtype="f8").reshape(500, 1000)
    xr.Dataset({"v": (("a", "b"), data)}).to_netcdf(path)
    ds = xr.open_dataset(path, engine="xrdist")
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000 < data.nbytes
    pickled = tmp_path / "ds.pickle"
    pickled.write_bytes(blob)
    code = (
        "import pickle, sys, numpy as np; "
        f"ds = pickle.load(open({str(pickled)!r}, 'rb')); "
        "assert float(ds.v.sum()) == float(np.arange(500_000).sum()); "
        "import xrdist; print(xrdist.cache_info().opens)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_metadata_is_not_walked_again_after_eviction(tmp_path, global_cache):
    path = tmp_path / "a.nc"
    big = np.arange(20_000)  # above the small-value threshold: read on demand
    xr.Dataset({"v": ("x", big), "small": ("s", [1, 2, 3])}).to_netcdf(path)
    clear_descriptions()
    walks_before = description_cache_info()["walks"]
    xr.open_dataset(path, engine="xrdist").close()
    xrdist.clear_cache()
    ds = xr.open_dataset(path, engine="xrdist")
    assert description_cache_info()["walks"] == walks_before + 1
    assert xrdist.cache_info().opens == 1  # the first walk; the reopen needed no open
    np.testing.assert_array_equal(ds.small.values, [1, 2, 3])
    assert xrdist.cache_info().opens == 1  # small values came with the description
    np.testing.assert_array_equal(ds.v.values, big)
    assert xrdist.cache_info().opens == 2  # reading data opens the file again


def test_file_replaced_after_open_is_an_error_not_wrong_data(tmp_path, global_cache):
    """Data read on demand from a file replaced since the open: an error naming it.
    Small values (read with the description) stay the values the file had at open."""
    path = tmp_path / "a.nc"
    xr.Dataset({"v": ("x", np.arange(20_000)), "s": ("n", [1, 2, 3])}).to_netcdf(path)
    ds = xr.open_dataset(path, engine="xrdist")
    other = tmp_path / "b.nc"
    xr.Dataset({"v": ("x", -np.arange(20_000)), "s": ("n", [7, 8, 9])}).to_netcdf(other)
    os.replace(other, path)
    with pytest.raises(OSError, match="was replaced by another file after it was opened"):
        ds.v.values  # noqa: B018
    np.testing.assert_array_equal(ds.s.values, [1, 2, 3])
    reopened = xr.open_dataset(path, engine="xrdist")
    np.testing.assert_array_equal(reopened.s.values, [7, 8, 9])
    np.testing.assert_array_equal(reopened.v.values, -np.arange(20_000))


def _big_file(path: Path, values: np.ndarray) -> None:
    """A netCDF-4 file whose variable ``v`` is above the size read with the metadata,
    zlib-chunked: read by byte ranges."""
    encoding = {"v": {"zlib": True, "chunksizes": (5_000,)}}
    xr.Dataset({"v": ("x", values)}).to_netcdf(path, engine="netcdf4", encoding=encoding)


def _stats_during(monkeypatch: pytest.MonkeyPatch, read: Any) -> int:
    """How many ``os.stat`` calls ``read()`` makes (counted; os.stat still runs)."""
    calls = []
    real = os.stat

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    read()
    monkeypatch.setattr(os, "stat", real)
    return len(calls)


def test_a_byte_range_read_checks_the_file_once_after_the_handle_is_indexed(
    tmp_path, global_cache, monkeypatch
):
    """The first read of a variable checks the handle before and the file after; later
    reads by byte ranges, which call no native library, check the file once, after."""
    path = tmp_path / "a.nc"
    _big_file(path, np.arange(20_000))
    ds = xr.open_dataset(path, engine="xrdist", library="h5py")
    assert _stats_during(monkeypatch, lambda: ds.v[:10].values) == 2  # not indexed yet
    assert _stats_during(monkeypatch, lambda: ds.v[10:20].values) == 1  # indexed: after only
    with xrdist.set_options(byte_range_reads=False):  # through h5py: before and after
        assert _stats_during(monkeypatch, lambda: ds.v[20:30].values) == 2
    np.testing.assert_array_equal(ds.v.values, np.arange(20_000))


@pytest.mark.parametrize("change", ["modify", "replace"])
def test_a_file_changed_after_an_indexed_read_is_an_error_naming_it(tmp_path, global_cache, change):
    """A file changed after a read indexed its handle: the next read, which checks the
    file only after reading, raises FileChangedError naming it; a dataset opened again
    on the new file reads its values through a new handle."""
    path = tmp_path / "a.nc"
    _big_file(path, np.arange(20_000))
    ds = xr.open_dataset(path, engine="xrdist", library="h5py")
    np.testing.assert_array_equal(ds.v[:100].values, np.arange(100))  # indexes the handle
    if change == "modify":
        with open(path, "r+b") as f:  # other bytes in place, and a later mtime
            f.seek(os.path.getsize(path) // 2)
            f.write(os.urandom(64))
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
        words = "was modified"
    else:
        other = tmp_path / "b.nc"
        _big_file(other, -np.arange(20_000))
        os.replace(other, path)
        words = "was replaced by another file after it was opened"
    with pytest.raises(FileChangedError, match=words) as raised:
        ds.v.values  # noqa: B018
    assert str(path) in str(raised.value)
    if change == "replace":
        again = xr.open_dataset(path, engine="xrdist", library="h5py")
        np.testing.assert_array_equal(again.v.values, -np.arange(20_000))
        assert global_cache.info().stale_reopens == 1


@pytest.mark.parametrize("kind", ["netcdf", "tiff"])
def test_a_file_rewritten_in_place_then_moved_is_an_error_not_its_new_values(
    tmp_path, global_cache, kind
):
    """A file rewritten in place (same inode, as cp does) and then moved away: a read by
    byte ranges through the handle cached before cannot check the file after the read,
    so it raises, naming it, instead of returning the rewritten bytes."""
    if kind == "netcdf":
        path, other = tmp_path / "a.nc", tmp_path / "b.nc"
        _big_file(path, np.arange(20_000))
        _big_file(other, -np.arange(20_000))
        ds = xr.open_dataset(path, engine="xrdist", library="h5py")
        ds.v[:10].values  # noqa: B018  (indexes the handle)
    else:
        path, other = tmp_path / "a.tif", tmp_path / "b.tif"
        image = np.arange(64 * 64, dtype="u2").reshape(64, 64)
        tifffile.imwrite(path, image, tile=(16, 16))
        tifffile.imwrite(other, 60_000 - image, tile=(16, 16))
        ds = xr.open_dataset(path, engine="xrdist", mask_and_scale=False)
    shutil.copyfile(other, path)  # the same inode, the other file's bytes
    os.rename(path, tmp_path / "moved")
    with pytest.raises(FileChangedError, match="cannot be checked after variable") as raised:
        ds[next(iter(ds.data_vars))].values  # noqa: B018
    assert str(path) in str(raised.value)


def test_a_byte_range_reader_reads_no_option_once_made(tmp_path, global_cache, monkeypatch):
    """The path of a read is decided once: a byte-range reader made for a handle reads by
    byte ranges even if another thread turns them off meanwhile, so an unchecked handle
    never reaches h5py."""
    from xrdist.formats import h5pylib

    path = tmp_path / "a.nc"
    _big_file(path, np.arange(20_000))
    proxy = h5pylib.proxy(str(path))
    with proxy.lease() as handle:
        h5pylib.read(handle, None, "v", (slice(0, 10),))  # builds the index
        reader = h5pylib.byte_range_reader(handle, None, "v")
        assert reader is not None
        with xrdist.set_options(byte_range_reads=False):
            assert h5pylib.byte_range_reader(handle, None, "v") is None

            def no_h5py(*args: Any) -> Any:
                raise AssertionError("h5py read through a handle that was not checked")

            monkeypatch.setattr(h5py.Dataset, "__getitem__", no_h5py)
            np.testing.assert_array_equal(reader((slice(100, 110),)), np.arange(100, 110))


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (lambda d: d / "missing.nc", FileNotFoundError, "No such file"),
        (lambda d: d, IsADirectoryError, "is a directory"),
        (
            lambda d: (d / "t.nc").write_text("hello world") and d / "t.nc",
            ValueError,
            r"not a netCDF, HDF5 or TIFF file: it starts with b'hello wo'",
        ),
        (lambda d: (d / "e.nc").write_bytes(b"") or d / "e.nc", ValueError, "it is empty"),
    ],
    ids=["missing", "directory", "text", "empty"],
)
def test_bad_input_errors_name_the_path(tmp_path, no_leaks, make, error, words):
    path = make(tmp_path)
    with pytest.raises(error, match=words) as excinfo:
        xr.open_dataset(path, engine="xrdist")
    assert str(path) in str(excinfo.value)


def test_truncated_file_error_names_the_path(tmp_path, no_leaks):
    path = tmp_path / "cut.nc"
    xr.Dataset({"v": ("x", np.arange(10_000.0))}).to_netcdf(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(OSError) as excinfo:
        xr.open_dataset(path, engine="xrdist").load()
    assert str(path) in str(excinfo.value)


def test_guess_can_open_reads_at_most_eight_bytes(tmp_path):
    entry = XrdistBackendEntrypoint()
    nc = tmp_path / "data.bin"
    xr.Dataset({"v": ("x", [1])}).to_netcdf(nc)
    assert entry.guess_can_open(nc)
    assert entry.guess_can_open(tmp_path / "whatever.nc")
    text = tmp_path / "notes.txt"
    text.write_text("not a netcdf file")
    assert not entry.guess_can_open(text)
    assert not entry.guess_can_open(tmp_path / "missing.txt")


def test_unknown_library_lists_the_choices(tmp_path):
    path = tmp_path / "a.nc"
    xr.Dataset({"v": ("x", [1])}).to_netcdf(path)
    with pytest.raises(ValueError, match=r"library='gdal' is not supported; choose one of"):
        xr.open_dataset(path, engine="xrdist", library="gdal")


@pytest.mark.stress
@pytest.mark.timeout(900)
@pytest.mark.parametrize("library", ["auto", "netcdf4"])
def test_threads_open_and_reduce_many_files(tmp_path, stress_seconds, library):
    """Open a few hundred files from a thread pool and reduce them with dask's threaded
    scheduler, repeatedly: no error, right answer (xarray's netcdf4 engine has crashed
    here)."""
    n_files = 200
    paths = []
    for i in range(n_files):
        path = tmp_path / f"f{i:03d}.nc"
        xr.Dataset({"v": (("y", "x"), np.full((20, 30), float(i)))}).to_netcdf(
            path, encoding={"v": {"zlib": True, "chunksizes": (10, 15)}}
        )
        paths.append(path)
    expected = sum(range(n_files)) * 600.0
    runs = max(2, int(stress_seconds))
    with xrdist.set_options(file_cache_maxsize=64):
        for _ in range(runs):
            clear_descriptions()
            with ThreadPoolExecutor(8) as pool:
                datasets = list(
                    pool.map(
                        lambda p: xr.open_dataset(p, engine="xrdist", chunks={}, library=library),
                        paths,
                    )
                )
            total = sum(ds.v.sum() for ds in datasets)
            with dask.config.set(scheduler="threads", num_workers=8):
                assert float(total.compute()) == expected


def test_auto_reads_plain_hdf5_and_enums_through_netcdf_c(tmp_path):
    """netCDF-C describes what h5py's walk does not; types h5py does not read (enums)
    are read by netCDF-C too, plain HDF5 datasets through h5py; identically."""
    import h5py
    import netCDF4

    from xrdist.describing import describe_file

    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["values"] = np.arange(12.0).reshape(3, 4)
        f.attrs["title"] = "no dimension scales"
    enum = tmp_path / "enum.nc"
    with netCDF4.Dataset(enum, "w") as ds:
        kind = ds.createEnumType("u1", "cloud_t", {"clear": 0, "cloudy": 1})
        ds.createDimension("x", 3)
        ds.createVariable("cloud", kind, ("x",))[:] = np.array([0, 1, 0], "u1")
    assert describe_file(str(enum), "auto", None).library == "netcdf4"
    assert describe_file(str(plain), "auto", None).library == "h5py"
    for path in (plain, enum):
        assert_same_as_netcdf4(path)
    with pytest.raises(ValueError, match=r"library='h5py' cannot describe this file .*'auto'"):
        xr.open_dataset(plain, engine="xrdist", library="h5py")


def test_dimension_scales_on_some_axes_only_read_as_netcdf_c_reads_them(tmp_path):
    """An axis without a dimension scale is a phony dimension to netCDF-C; h5py's walk
    leaves such a file to it, and says so when asked for h5py by name."""
    import h5py

    partial = tmp_path / "partial.h5"
    with h5py.File(partial, "w") as f:
        x = f.create_dataset("x", data=np.arange(4.0))
        x.make_scale("x")
        v = f.create_dataset("v", data=np.arange(12.0).reshape(3, 4))
        v.dims[1].attach_scale(x)
    assert_same_as_netcdf4(partial)
    with pytest.raises(ValueError, match=r"'v' has no netCDF dimension on axes \[0\]"):
        xr.open_dataset(partial, engine="xrdist", library="h5py")


def test_auto_prefers_h5py_for_netcdf4_files(corpus):
    from xrdist.describing import describe_file

    assert describe_file(str(corpus["netcdf4"]), "auto", None).library == "h5py"
    assert describe_file(str(corpus["netcdf3"]), "auto", None).library == "netcdf4"


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("group", [None, "g1"])
def test_datatree_identical(corpus, library, group):
    ours = xr.open_datatree(corpus["groups"], engine="xrdist", library=library, group=group)
    theirs = xr.open_datatree(corpus["groups"], engine="netcdf4", group=group)
    xr.testing.assert_identical(ours, theirs)


@pytest.fixture(scope="module")
def plugin_file(tmp_path_factory) -> Path:
    """Variables compressed with the plugin filters netCDF4's wheels carry."""
    import netCDF4

    path = tmp_path_factory.mktemp("plugins") / "plugins.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 500)
        for codec in ["zstd", "bzip2", "blosc_lz4", "blosc_zstd", "zlib"]:
            var = ds.createVariable(codec, "f4", ("x",), compression=codec, complevel=3)
            var[:] = np.sin(np.arange(500.0))
    return path


@pytest.mark.parametrize("library", LIBRARIES)
def test_plugin_compressors_identical(plugin_file, library):
    assert_same_as_netcdf4(plugin_file, library=library)


def test_missing_filter_is_named_with_the_package_to_install(plugin_file, tmp_path):
    """Where no plugin decodes a filter, both libraries say which filter is missing and
    what to do (auto tries h5py, then netCDF-C)."""
    code = f"""
import os, xarray as xr
os.environ["HDF5_PLUGIN_PATH"] = {str(tmp_path)!r}
import h5py
assert not h5py.h5z.filter_avail(32015)
from xrdist.describing import describe_file
try:
    xr.open_dataset({str(plugin_file)!r}, engine="xrdist", library="h5py")
except ValueError as err:
    print("ERROR", err)
try:
    describe_file({str(plugin_file)!r}, "auto", None)
except OSError as err:
    print("AUTO", err)
"""
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    env["HDF5_PLUGIN_PATH"] = str(tmp_path)
    env["XRDIST_CACHE_DIR"] = ""  # walk the file: descriptions on disk would skip that
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "zstd (HDF5 filter id 32015)" in out.stdout
    assert "pip install hdf5plugin" in out.stdout and str(plugin_file) in out.stdout
    assert "AUTO cannot read variable" in out.stdout and "HDF5_PLUGIN_PATH" in out.stdout


def test_hdf5_user_block_of_any_size_is_recognised(tmp_path):
    import h5py

    from xrdist.describing import sniff_format

    path = tmp_path / "userblock.h5"
    with h5py.File(path, "w", userblock_size=8192) as f:
        f["x"] = np.arange(3)
    assert sniff_format(str(path)) == "hdf5"


def test_variable_named_like_another_dimension_is_read_lazily(tmp_path):
    """netCDF-4 stores it as ``_nc4_non_coord_<name>``; netCDF-C describes it by its name
    and the h5py reads find it under the prefix."""
    import netCDF4

    path = tmp_path / "noncoord.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 3)
        ds.createDimension("y", 20000)  # 160 KB: read lazily, not with the description
        ds.createVariable("x", "f8", ("y",))[:] = np.arange(20000.0)
    ours = xr.open_dataset(path, engine="xrdist")
    assert ours.x.variable._data is not None and ours.x.dims == ("y",)
    xr.testing.assert_identical(ours.load(), xr.open_dataset(path, engine="netcdf4").load())
