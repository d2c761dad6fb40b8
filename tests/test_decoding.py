"""xarray's elementwise CF decoding runs inside the stack reads, file by file, and gives
bitwise the values xarray's own lazy decoding gives."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from xarray.backends import BackendArray
from xarray.coding.common import lazy_elemwise_func
from xarray.core import indexing

import xrdist
from xrdist.array import StackArray
from xrdist.decoding import elementwise_chain, fuse_decoding

pytestmark = pytest.mark.filterwarnings("ignore:variable .* has multiple fill values")

NY, NX = 12, 10

# variable -> (raw values of one date, encoding): every elementwise decoding xarray does
ENCODINGS = {
    "packed_u2": ("u2", {"scale_factor": np.float32(1e-4), "_FillValue": np.uint16(0)}),
    "packed_i2_offset": (
        "i2",
        {"scale_factor": 0.01, "add_offset": 250.0, "_FillValue": np.int16(-32768)},
    ),
    "unsigned_i1": ("i1", {"_Unsigned": "true", "_FillValue": np.int8(-1)}),
    "float_two_fills": ("f4", {"_FillValue": np.float32(-999), "missing_value": np.float32(-1)}),
    "plain_i4": ("i4", {}),
}


def _write(folder: Path, dates: int = 6) -> list[str]:
    rng = np.random.default_rng(3)
    paths = []
    for t in range(dates):
        ds = xr.Dataset(coords={"time": [t], "y": np.arange(NY), "x": np.arange(NX)})
        for name, (dtype, attrs) in ENCODINGS.items():
            info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
            lo, hi = (info.min, info.max) if info else (-5, 5)
            raw = rng.integers(lo, hi, (1, NY, NX), endpoint=True).astype(dtype)
            fills = [attrs[k] for k in ("_FillValue", "missing_value") if k in attrs]
            for fill in fills:  # some pixels of each fill value
                raw.flat[rng.integers(0, raw.size, 8)] = fill
            ds[name] = (("time", "y", "x"), raw, dict(attrs))
        path = folder / f"d{t}.nc"
        ds.to_netcdf(path, engine="netcdf4", encoding={n: {"zlib": True} for n in ENCODINGS})
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return _write(tmp_path_factory.mktemp("encodings"), dates=12)


def _bits(values: np.ndarray) -> np.ndarray:
    """The values' bytes, so that NaN == NaN and -0.0 != 0.0."""
    return np.ascontiguousarray(values).view(np.uint8)


@pytest.mark.parametrize("read_threads", [1, 2])
@pytest.mark.parametrize("chunks", [{"time": 5, "y": -1, "x": -1}, None])
def test_decoding_in_reads_is_bitwise_xarrays(
    paths: list[str], chunks: dict | None, read_threads: int
) -> None:
    """Whatever the grouping of files decoded together (all 12 at once with one reader
    thread, one per group when a lone call has two: see ``decode_batches``)."""
    with xrdist.set_options(read_threads=read_threads):
        fused = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=chunks)
        fused = fused.load()
    with xrdist.set_options(decode_in_readers=False):
        chained = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=chunks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        reference = xr.open_mfdataset(
            paths, engine="netcdf4", concat_dim="time", combine="nested"
        ).load()
    for name in ENCODINGS:
        want = reference[name]
        for ds in (fused, chained):
            got = ds[name].load()
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(_bits(got.values), _bits(want.values), err_msg=name)
            assert got.attrs == want.attrs and got.encoding["dtype"] == want.encoding["dtype"]


def test_stacked_variables_carry_their_decoding(paths: list[str]) -> None:
    """The moved decoding is there (a change in xarray that stopped it would fail here,
    not only slow reads down), and only where there is something to move."""
    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    for name in ENCODINGS:
        data = ds[name].variable._data
        assert isinstance(data, indexing.LazilyIndexedArray), name
        assert isinstance(data.array, StackArray), name
        assert bool(data.array.decode) == (name != "plain_i4"), name
        assert data.array.dtype == ds[name].dtype
    with xrdist.set_options(decode_in_readers=False):
        off = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    assert not isinstance(off["packed_u2"].variable._data, indexing.LazilyIndexedArray)


def test_decoded_stack_pickles_without_data(paths: list[str]) -> None:
    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    blob = pickle.dumps(ds)
    assert len(blob) < 50_000
    back = pickle.loads(blob)
    np.testing.assert_array_equal(
        _bits(back["packed_i2_offset"].values), _bits(ds["packed_i2_offset"].values)
    )


def test_time_decoding_stays_with_xarray(tmp_path: Path) -> None:
    """Only known elementwise functions move: a stacked variable of CF times keeps
    xarray's chain and still decodes right."""
    for t in range(3):
        ds = xr.Dataset(
            {
                "seen": (
                    ("time", "x"),
                    np.array([[t, t + 1]], "i4"),
                    {"units": "days since 2000-01-01"},
                )
            },
            coords={"time": [t]},
        )
        ds.to_netcdf(tmp_path / f"t{t}.nc", engine="netcdf4")
    files = sorted(str(p) for p in tmp_path.glob("t*.nc"))
    got = xrdist.open_mfdataset(files, concat_dim="time", combine="nested", chunks=None)
    assert not isinstance(got.seen.variable._data, indexing.LazilyIndexedArray)
    assert str(got.seen.values[2, 1])[:10] == "2000-01-04"


class _Piecewise(BackendArray):
    """An array that can take decoding (for the pure checks of fuse_decoding)."""

    shape, dtype, ndim = (4,), np.dtype("u2"), 1

    def __init__(self, decode: tuple = (), dtype: np.dtype | None = None) -> None:
        self.decode, self.decoded_dtype = decode, dtype

    def with_decoding(self, functions: tuple, dtype: np.dtype) -> _Piecewise:
        return _Piecewise(self.decode + functions, dtype)

    def __getitem__(self, key: object) -> np.ndarray:  # pragma: no cover - never read
        raise AssertionError("fuse_decoding must not read")


def test_fuse_decoding_moves_known_functions_in_order() -> None:
    from functools import partial

    from xarray.coding.variables import _apply_mask, _scale_offset_decoding

    mask = partial(_apply_mask, encoded_fill_values={0}, decoded_fill_value=np.nan, dtype="f4")
    scale = partial(_scale_offset_decoding, scale_factor=2.0, add_offset=None, dtype="f4")
    lazy = indexing.LazilyIndexedArray(_Piecewise())
    chain = lazy_elemwise_func(lazy_elemwise_func(lazy, mask, "f4"), scale, "f4")
    fused = fuse_decoding(chain)
    assert isinstance(fused, indexing.LazilyIndexedArray)
    assert fused.array.decode == (mask, scale)
    assert fused.array.decoded_dtype == np.dtype("f4")
    assert elementwise_chain(chain) == ([mask, scale], lazy)
    # an unknown function anywhere in the chain: nothing moves
    other = lazy_elemwise_func(chain, partial(np.negative), "f4")
    assert fuse_decoding(other) is other
    # a window already taken (not the whole array): nothing moves
    window = lazy_elemwise_func(lazy[indexing.BasicIndexer((slice(1, 3),))], mask, "f4")
    assert fuse_decoding(window) is window


def _chains() -> list[tuple[str, str, tuple]]:
    """(raw dtype, window dtype, xarray's functions): the chains xarray builds, and
    dtype changes between steps (mask in float32, scale in float64)."""
    from functools import partial

    from xarray.coding.variables import _apply_mask, _scale_offset_decoding

    nan = np.nan
    return [
        ("u2", "f4", (partial(_apply_mask, encoded_fill_values=[np.uint16(0)],
                              decoded_fill_value=nan, dtype=np.float32),
                      partial(_scale_offset_decoding, scale_factor=np.float32(1e-4),
                              add_offset=None, dtype=np.float32))),
        ("i2", "f8", (partial(_apply_mask, encoded_fill_values=[np.int16(-32768)],
                              decoded_fill_value=nan, dtype=np.float32),
                      partial(_scale_offset_decoding, scale_factor=0.01, add_offset=250.0,
                              dtype=np.float64))),
        ("i4", "f8", (partial(_scale_offset_decoding, scale_factor=None, add_offset=1.5,
                              dtype=None),)),
        ("f4", "f4", (partial(_apply_mask, encoded_fill_values=[np.float32(-999), -1.0],
                              decoded_fill_value=nan, dtype=None),)),
        ("i1", "f4", (partial(np.asarray, dtype="u1"),
                      partial(_apply_mask, encoded_fill_values=[np.uint8(255)],
                              decoded_fill_value=nan, dtype=np.float32))),
        ("u2", "u2", ()),
    ]  # fmt: skip


@pytest.mark.parametrize(("raw_dtype", "dtype", "functions"), _chains(), ids=range(6))
def test_decoding_into_the_window_is_bitwise_the_functions(raw_dtype, dtype, functions):
    """decode_into, writing into a strided view of a bigger window, gives the bytes of
    xarray's functions applied one after the other."""
    from xrdist.decoding import decode_into

    info = np.iinfo(raw_dtype) if np.dtype(raw_dtype).kind in "iu" else None
    rng = np.random.default_rng(7)
    raw = rng.integers(info.min if info else -1000, info.max if info else 1000, (3, 9, 7))
    raw = raw.astype(raw_dtype)
    raw.flat[::5] = {"u2": 0, "i2": -32768, "i1": -1, "f4": -999}.get(raw_dtype, 0)
    raw.flat[1::7] = -1 if raw_dtype != "u2" else 1
    expected = raw
    for function in functions:
        expected = function(expected)
    window = np.full((3, 20, 7), 42, dtype=dtype)
    decode_into(functions, raw, window[:, 2:20:2])
    np.testing.assert_array_equal(_bits(window[:, 2:20:2]), _bits(expected.astype(dtype)))
    assert expected.dtype == dtype
    assert (window[:, 1::2] == 42).all() and (window[:, 0] == 42).all()  # nothing else


def test_repeated_variables_decode_in_groups_of_files(tmp_path: Path) -> None:
    """A variable without the concatenated dimension, repeated along it
    (``data_vars="all"``), decodes bitwise as xarray's ``open_mfdataset`` decodes it, when
    several files' parts are decoded together."""
    paths = []
    for t in range(9):
        raw = np.full((NY, NX), 1000 + t, dtype="u2")
        raw[0, :3] = 0  # the fill value
        ds = xr.Dataset(
            {"static": (("y", "x"), raw, {"scale_factor": np.float32(0.5), "_FillValue": 0})},
            coords={"time": [t]},
        )
        ds["refl"] = (("time", "y", "x"), raw[None].astype("f4"))
        paths.append(str(tmp_path / f"s{t}.nc"))
        ds.to_netcdf(paths[-1], encoding={"static": {"dtype": "u2", "zlib": True}})
    options = {"concat_dim": "time", "combine": "nested", "data_vars": "all"}
    with xrdist.set_options(read_threads=1):
        got = xrdist.open_mfdataset(paths, chunks={"time": -1}, **options)["static"].load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        want = xr.open_mfdataset(paths, engine="netcdf4", **options)["static"].load()
    assert got.dims == want.dims == ("time", "y", "x")
    np.testing.assert_array_equal(_bits(got.values), _bits(want.values))


@pytest.mark.parametrize("name", ["packed_u2", "plain_i4"])
@pytest.mark.parametrize("step", [1, 2], ids=["into-slots", "gathered"])
def test_a_part_of_another_dtype_names_the_file(
    paths: list[str], monkeypatch, name: str, step: int
) -> None:
    """Files of one stack share each variable's dtype (the scan checks it); a part that
    reads otherwise (a file rewritten in a way its size and time do not show) is an
    error naming the file, not a silent conversion, whether or not it is decoded, and
    whether the parts are read straight into the window or gathered (a strided key)."""
    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    stack = ds[name].variable._data.array
    read_raw = StackArray._read_raw

    def read_raw_changed(self, f, key, box=None):
        raw = read_raw(self, f, key, box)
        return raw.astype("u4") if f == 1 else raw

    read_into = xrdist.array.read_window_into

    def read_into_changed(proxy, *args):  # the byte-range path, straight into the window
        dtype = read_into(proxy, *args)
        return np.dtype("u4") if proxy.path == paths[1] else dtype

    monkeypatch.setattr(StackArray, "_read_raw", read_raw_changed)
    monkeypatch.setattr(xrdist.array, "read_window_into", read_into_changed)
    with xrdist.set_options(read_threads=1), pytest.raises(ValueError, match=r"d1\.nc"):
        stack[indexing.BasicIndexer((slice(None), slice(None, None, step), slice(None)))]


@pytest.mark.parametrize(("read_threads", "groups"), [(1, 1), (2, 6)])
def test_a_window_decodes_in_as_few_groups_as_its_readers_need(
    paths: list[str], monkeypatch, read_threads: int, groups: int
) -> None:
    """Each numpy call of the decoding hands the GIL over: a call that reads alone
    decodes its whole window at once; one that two threads read splits its 12 files
    for at least four groups per thread (six of two files), so that both have work to
    the end."""
    shapes = _decoded_groups(paths, monkeypatch, read_threads)
    assert len(shapes) == groups
    assert sum(shape[0] for shape in shapes) == len(paths)


def _decoded_groups(paths: list[str], monkeypatch, read_threads: int) -> list[tuple[int, ...]]:
    """The shapes of the groups of files decoded at once when ``packed_u2`` of the whole
    stack is read with ``read_threads`` (``decode_into`` counted, not replaced)."""
    from xrdist import array

    shapes: list[tuple[int, ...]] = []
    decode_into = array.decode_into

    def counted(functions, raw, out):
        shapes.append(out.shape)
        decode_into(functions, raw, out)

    monkeypatch.setattr(array, "decode_into", counted)
    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    stack = ds["packed_u2"].variable._data.array
    with xrdist.set_options(read_threads=read_threads):
        stack[indexing.BasicIndexer((slice(None), slice(None), slice(None)))]
    return shapes


def test_a_window_works_out_its_box_once_not_per_file(paths: list[str], monkeypatch) -> None:
    """Once the files' handles hold their chunk indexes, a window of unit-step slices
    reads every file's box as worked out once for the window (the same in all files),
    with the same values as reading each file's key."""
    from xrdist import array, window

    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    stack = ds["packed_u2"].variable._data.array
    key = indexing.BasicIndexer((slice(None), slice(2, 9), slice(1, 10)))
    with xrdist.set_options(read_threads=1):
        want = stack[key]  # the first read indexes every handle
        calls: list[tuple[object, ...]] = []
        for module in (array, window):
            counted = module.bounding_box

            def counting(key, shape, counted=counted):
                calls.append(key)
                return counted(key, shape)

            monkeypatch.setattr(module, "bounding_box", counting)
        got = stack[key]
    assert len(calls) == 1
    np.testing.assert_array_equal(_bits(got), _bits(want))
    by_key = np.stack([np.asarray(xr.open_dataset(p).packed_u2[:, 2:9, 1:10])[0] for p in paths])
    np.testing.assert_array_equal(_bits(got), _bits(by_key))


@pytest.fixture(scope="module")
def time_in_the_middle(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Files of 1, 2 and 1 dates whose variable has the files' axis second."""
    folder = tmp_path_factory.mktemp("middle")
    rng = np.random.default_rng(5)
    paths, start = [], 0
    for dates in (1, 2, 1):
        raw = rng.integers(0, 500, (NY, dates, NX)).astype("u2")
        raw[0, :, :2] = 0  # the fill value
        ds = xr.Dataset(
            {"v": (("y", "time", "x"), raw, {"scale_factor": np.float32(0.5), "_FillValue": 0})},
            coords={"time": np.arange(start, start + dates)},
        )
        start += dates
        paths.append(str(folder / f"m{len(paths)}.nc"))
        ds.to_netcdf(
            paths[-1], encoding={"v": {"dtype": "u2", "zlib": True, "chunksizes": (5, 1, 4)}}
        )
    return paths


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), slice(None), slice(None)),
        (slice(2, 9), slice(1, 3), slice(-7, None)),
        (slice(None), 2, slice(3, 4)),  # one date, dropped
        (slice(None, None, 3), slice(None), slice(1, 9, 2)),  # steps
        (np.array([0, 4, 5]), np.array([0, 2, 3]), slice(None)),  # lists
        (slice(3, 3), slice(None), slice(None)),  # empty
        (-1, slice(None, None, -1), slice(None)),  # backwards along the files
    ],
)
def test_windows_of_a_stack_with_the_files_axis_second(
    time_in_the_middle: list[str], key: tuple[object, ...]
) -> None:
    """Any outer key reads what xarray reads, whether each file's box is worked out once
    for the window (unit-step slices) or from its own key."""
    ours = xrdist.open_mfdataset(time_in_the_middle, chunks=None)["v"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = xr.open_mfdataset(time_in_the_middle, engine="netcdf4")["v"].load()
    for read_threads in (1, 2):
        with xrdist.set_options(read_threads=read_threads):
            got = ours[{d: k for d, k in zip(("y", "time", "x"), key, strict=True)}].values
        want = theirs[{d: k for d, k in zip(("y", "time", "x"), key, strict=True)}].values
        np.testing.assert_array_equal(_bits(got), _bits(want))


def test_decoded_groups_stay_bounded(paths: list[str], monkeypatch) -> None:
    """Masking makes boolean temporaries the size of a group: a lone reader's window
    larger than ``DECODE_BATCH_BYTES`` is decoded in groups of at most that size."""
    from xrdist import array

    monkeypatch.setattr(array, "DECODE_BATCH_BYTES", 3 * NY * NX * 4)  # 3 dates of float32
    shapes = _decoded_groups(paths, monkeypatch, read_threads=1)
    assert [shape[0] for shape in shapes] == [3, 3, 3, 3]


def test_an_empty_selection_along_the_files_reads_nothing(paths: list[str]) -> None:
    """As in xarray: no date selected is an empty array, not an error."""
    ds = xrdist.open_mfdataset(paths, concat_dim="time", combine="nested", chunks=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        theirs = xr.open_mfdataset(paths, engine="netcdf4", concat_dim="time", combine="nested")
    for name in ("packed_u2", "plain_i4"):
        got = ds[name].isel(time=slice(3, 3)).values
        want = theirs[name].isel(time=slice(3, 3)).values
        assert got.shape == want.shape == (0, NY, NX) and got.dtype == want.dtype
        assert ds[name].sel(time=ds.time > 100).shape == (0, NY, NX)
        assert ds[name].sel(time=ds.time > 100).values.shape == (0, NY, NX)
