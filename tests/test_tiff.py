"""GeoTIFF/COG through engine="xrdist", checked against rioxarray on files GDAL writes."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import xarray as xr

import xrdist
from xrdist.byterange import CorruptChunkError
from xrdist.formats.tifflib import NotGeoreferencedWarning
from xrdist.scan import StackError

rasterio = pytest.importorskip("rasterio")
rioxarray = pytest.importorskip("rioxarray")
tifffile = pytest.importorskip("tifffile")
from rasterio.transform import from_origin  # noqa: E402


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: Any = "EPSG:32633",
    transform: Any = None,
    descriptions: tuple[str, ...] | None = None,
    scales: tuple[float, ...] | None = None,
    offsets: tuple[float, ...] | None = None,
    tags: dict[str, str] | None = None,
    overviews: tuple[int, ...] = (),
    **profile: Any,
) -> Path:
    """A GeoTIFF written by GDAL (through rasterio) with ``data`` of shape (band, y, x)."""
    count, height, width = data.shape
    options = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform or from_origin(600000, 5200000, 20, 20),
    }
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
        for b, text in enumerate(descriptions or (), start=1):
            dst.set_band_description(b, text)
        if scales:
            dst.scales = scales
        if offsets:
            dst.offsets = offsets
        if tags:
            dst.update_tags(**tags)
        if overviews:
            dst.build_overviews(list(overviews), rasterio.enums.Resampling.average)
    return path


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 5000), shape).astype(dtype)


# Several dtypes, band counts, tile sizes, interleaves and compressions, plus stripped.
CASES = {
    "uint16-deflate-pred2-tiles256": (
        "uint16",
        3,
        {
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "predictor": 2,
            "nodata": 0,
        },
    ),
    "uint8-lzw-band-interleave": (
        "uint8",
        4,
        {
            "tiled": True,
            "blockxsize": 128,
            "blockysize": 128,
            "compress": "lzw",
            "interleave": "band",
            "photometric": "MINISBLACK",
        },
    ),
    "int16-zstd-tiles512": (
        "int16",
        1,
        {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "zstd", "nodata": -9999},
    ),
    "float32-deflate-pred3-nan": (
        "float32",
        2,
        {
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
            "predictor": 3,
            "nodata": float("nan"),
        },
    ),
    "float64-uncompressed-stripped": ("float64", 1, {"tiled": False, "blockysize": 7}),
    "int32-packbits-stripped-pixel": ("int32", 2, {"tiled": False, "compress": "packbits"}),
    "uint8-jpeg-rgb": (
        "uint8",
        3,
        {
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "jpeg",
            "photometric": "RGB",
        },
    ),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def case_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dtype, bands, profile = CASES[request.param]
    path = tmp_path_factory.mktemp("tif") / f"{request.param}.tif"
    data = sample(dtype, (bands, 301, 517))
    if "nodata" in profile and not np.isnan(profile["nodata"]):
        data[:, :20, :30] = profile["nodata"]
    elif "nodata" in profile:
        data[:, :20, :30] = np.nan
    return write_tif(path, data, **profile)


def test_raw_values_coords_and_crs_agree_with_rioxarray(case_file: Path) -> None:
    ours = xr.open_dataset(case_file, engine="xrdist", mask_and_scale=False)
    ref = rioxarray.open_rasterio(case_file)
    np.testing.assert_array_equal(ours.band_data.values, ref.values)
    for name in ("band", "x", "y"):
        np.testing.assert_array_equal(ours[name].values, ref[name].values)
    assert ours.spatial_ref.attrs == ref.spatial_ref.attrs
    assert ours.rio.crs == ref.rio.crs
    assert ours.rio.transform() == ref.rio.transform()
    attrs = ours.band_data.attrs
    for key in ("_FillValue", "scale_factor", "add_offset", "AREA_OR_POINT", "long_name"):
        if key in ref.attrs:
            np.testing.assert_equal(attrs[key], ref.attrs[key])


def test_decoded_values_agree_with_rioxarray_engine(case_file: Path) -> None:
    ours = xr.open_dataset(case_file, engine="xrdist")
    ref = xr.open_dataset(case_file, engine="rasterio")
    assert ours.band_data.dtype == ref.band_data.dtype
    np.testing.assert_allclose(ours.band_data.values, ref.band_data.values, rtol=1e-6)


def test_windows_and_outer_indexing_match(case_file: Path) -> None:
    ours = xr.open_dataset(case_file, engine="xrdist", mask_and_scale=False).band_data
    ref = rioxarray.open_rasterio(case_file).values
    for key in [
        (0, slice(250, 301), slice(500, 517)),
        (slice(None), slice(3, 290, 7), [1, 300, 516, 2]),
        (-1, 129, slice(None, None, -3)),
        (slice(0, 0), slice(None), slice(None)),
    ]:
        np.testing.assert_array_equal(ours[key].values, ref[key])


def test_preferred_chunks_are_tiles_and_chunks_auto_aligns(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "t.tif",
        sample("uint16", (2, 1000, 1100)),
        tiled=True,
        blockxsize=256,
        blockysize=128,
        interleave="band",
        compress="deflate",
    )
    ds = xr.open_dataset(path, engine="xrdist", chunks={})
    assert ds.band_data.encoding["preferred_chunks"] == {"band": 1, "y": 128, "x": 256}
    assert ds.band_data.chunks == ((1, 1), (128,) * 7 + (104,), (256,) * 4 + (76,))
    auto = xr.open_dataset(path, engine="xrdist", chunks="auto").band_data.chunks
    assert all(c % 128 == 0 for c in auto[1][:-1]) and all(c % 256 == 0 for c in auto[2][:-1])


def test_a_window_reads_only_the_tiles_it_touches(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "big.tif",
        sample("uint16", (1, 2048, 2048)),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )  # uncompressed: each tile is 128 KiB
    ds = xr.open_dataset(path, engine="xrdist")
    ds.band_data[0, 0, 0].load()  # index built; handle open
    io = psutil.Process().io_counters
    before = io().read_chars
    ds.band_data[0, 300:400, 600:700].load()  # one tile
    assert io().read_chars - before <= 2 * 256 * 256 * 2


def test_overviews_are_reachable_and_agree_with_rioxarray(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "cog.tif",
        sample("uint16", (1, 1024, 768)),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
        overviews=(2, 4),
    )
    for level in (0, 1):
        ours = xr.open_dataset(path, engine="xrdist", overview_level=level, mask_and_scale=False)
        ref = rioxarray.open_rasterio(path, overview_level=level)
        np.testing.assert_array_equal(ours.band_data.values, ref.values)
        np.testing.assert_allclose(ours.x.values, ref.x.values)
        np.testing.assert_allclose(ours.y.values, ref.y.values)
    with pytest.raises(ValueError, match="overview_level=2 does not exist"):
        xr.open_dataset(path, engine="xrdist", overview_level=2)


def test_cog_driver_output(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "real.cog.tif",
        sample("int16", (2, 700, 900)),
        driver="COG",
        compress="deflate",
        blocksize=256,
        nodata=-1,
    )
    ours = xr.open_dataset(path, engine="xrdist", mask_and_scale=False)
    np.testing.assert_array_equal(ours.band_data.values, rioxarray.open_rasterio(path).values)
    assert ours.band_data.encoding["overviews"] >= 1


def test_scale_offset_descriptions_and_tags(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "s.tif",
        sample("uint16", (2, 64, 80)),
        descriptions=("red", "nir"),
        scales=(0.0001, 0.0001),
        offsets=(-0.1, -0.1),
        tags={"TIFFTAG_DATETIME": "2024:03:01 10:20:30"},
        nodata=0,
    )
    raw = xr.open_dataset(path, engine="xrdist", mask_and_scale=False).band_data
    ref = rioxarray.open_rasterio(path)
    assert raw.attrs["long_name"] == ref.attrs["long_name"] == ("red", "nir")
    assert raw.attrs["TIFFTAG_DATETIME"] == "2024:03:01 10:20:30"
    ours = xr.open_dataset(path, engine="xrdist").band_data
    theirs = rioxarray.open_rasterio(path, mask_and_scale=True)
    np.testing.assert_allclose(ours.values, theirs.values, rtol=1e-6)
    assert np.isnan(ours.values[raw.values == 0]).all()


def test_geographic_crs_and_pixel_is_point(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "g.tif",
        sample("float32", (1, 90, 180)),
        crs="EPSG:4326",
        transform=from_origin(-180, 90, 2, 2),
        tags={"AREA_OR_POINT": "Point"},
    )
    ours = xr.open_dataset(path, engine="xrdist")
    ref = rioxarray.open_rasterio(path)
    np.testing.assert_allclose(ours.x.values, ref.x.values)
    np.testing.assert_allclose(ours.y.values, ref.y.values)
    assert ours.band_data.attrs["AREA_OR_POINT"] == ref.attrs["AREA_OR_POINT"] == "Point"
    assert ours.rio.crs == ref.rio.crs


@pytest.mark.parametrize("code", [3035, 31467, 3857])
def test_epsg_codes_with_northing_first_axes_keep_their_code(tmp_path: Path, code: int) -> None:
    path = write_tif(
        tmp_path / f"e{code}.tif",
        sample("uint8", (1, 20, 30)),
        crs=f"EPSG:{code}",
        transform=from_origin(4_000_000, 3_000_000, 100, 100),
    )
    ours = xr.open_dataset(path, engine="xrdist")
    ref = rioxarray.open_rasterio(path)
    assert ours.rio.crs.to_epsg() == ref.rio.crs.to_epsg() == code
    assert ours.spatial_ref.attrs["crs_wkt"] == ref.spatial_ref.attrs["crs_wkt"]


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_complex_bands_keep_their_imaginary_part(tmp_path: Path, dtype: str) -> None:
    values = sample("float32", (1, 16, 24)) + 1j * sample("float32", (1, 16, 24))[:, ::-1]
    path = write_tif(tmp_path / f"{dtype}.tif", values.astype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("error", np.exceptions.ComplexWarning)
        ours = xr.open_dataset(path, engine="xrdist").band_data
    theirs = rioxarray.open_rasterio(path, mask_and_scale=True)
    assert ours.dtype == theirs.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ours.values, theirs.values)


def test_user_defined_crs_is_read_through_gdal(tmp_path: Path) -> None:
    proj = "+proj=aea +lat_1=29.5 +lat_2=45.5 +lat_0=23 +lon_0=-96 +datum=WGS84 +units=m"
    path = write_tif(tmp_path / "u.tif", sample("uint8", (1, 30, 40)), crs=proj)
    ours = xr.open_dataset(path, engine="xrdist")
    assert ours.rio.crs == rioxarray.open_rasterio(path).rio.crs


def test_sparse_tiles_read_as_nodata(tmp_path: Path) -> None:
    data = np.full((1, 512, 512), 7, dtype="uint16")
    data[:, :256, :256] = 0
    path = write_tif(
        tmp_path / "sparse.tif",
        data,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        nodata=0,
        sparse_ok=True,
    )
    assert 0 in tifffile.TiffFile(path).pages[0].databytecounts  # really sparse
    raw = xr.open_dataset(path, engine="xrdist", mask_and_scale=False).band_data.values
    np.testing.assert_array_equal(raw, data)


def test_not_georeferenced_opens_with_pixel_coordinates_and_warns(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, sample("uint16", (40, 50)), tile=(16, 16))
    with pytest.warns(NotGeoreferencedWarning, match="plain.tif"):
        ours = xr.open_dataset(path, engine="xrdist", mask_and_scale=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = rioxarray.open_rasterio(path)
    np.testing.assert_array_equal(ours.band_data.values, ref.values)
    np.testing.assert_array_equal(ours.x.values, ref.x.values)
    np.testing.assert_array_equal(ours.y.values, ref.y.values)
    assert "spatial_ref" not in ours.variables


# -- errors ----------------------------------------------------------------------------


def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "fake.tif"
    path.write_bytes(b"GIF89a" + bytes(100))
    with pytest.raises(ValueError, match=r"fake\.tif.*not a netCDF, HDF5 or TIFF"):
        xr.open_dataset(path, engine="xrdist")


def test_truncated_file_names_the_path_and_leaks_nothing(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "cut.tif",
        sample("uint16", (1, 512, 512)),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises((CorruptChunkError, ValueError), match=r"cut\.tif"):
        xr.open_dataset(path, engine="xrdist").band_data.load()
    xrdist.clear_cache()
    assert len(os.listdir("/proc/self/fd")) <= fds


def test_corrupt_tile_names_file_variable_and_tile(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "bad.tif",
        sample("uint16", (1, 512, 512)),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    page = tifffile.TiffFile(path).pages[0]
    offset = page.dataoffsets[3]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 16)
    ds = xr.open_dataset(path, engine="xrdist")
    np.asarray(ds.band_data[0, :256, :256].values)  # tile 0 still fine
    with pytest.raises(CorruptChunkError, match=r"bad\.tif.*'band_data', tile 3"):
        ds.band_data[0, 256:, 256:].load()


def test_undecodable_compression_names_codec_and_package(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "odd.tif", sample("uint8", (1, 32, 32)), compress="deflate")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(34892 + 1000)  # no such codec
    with pytest.raises(ValueError, match=r"odd\.tif.*(compression|codec).*imagecodecs"):
        xr.open_dataset(path, engine="xrdist")


def test_wrong_library_for_a_tiff(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "a.tif", sample("uint8", (1, 8, 8)))
    with pytest.raises(ValueError, match=r"a\.tif.*library='h5py' cannot read it"):
        xr.open_dataset(path, engine="xrdist", library="h5py")


# -- threads, pickling -------------------------------------------------------------------


def test_concurrent_reads_from_threads_are_correct(tmp_path: Path) -> None:
    paths, refs = [], []
    for i in range(6):
        data = sample("uint16", (2, 300, 400), seed=i)
        paths.append(
            write_tif(
                tmp_path / f"c{i}.tif",
                data,
                tiled=True,
                blockxsize=128,
                blockysize=128,
                compress="deflate",
                predictor=2,
            )
        )
        refs.append(data)
    datasets = [xr.open_dataset(p, engine="xrdist", mask_and_scale=False) for p in paths]
    rng = np.random.default_rng(1)
    jobs = []
    for _ in range(300):
        f = int(rng.integers(6))
        y0, x0 = int(rng.integers(0, 290)), int(rng.integers(0, 390))
        jobs.append((f, slice(y0, y0 + int(rng.integers(1, 200))), slice(x0, None)))
    barrier = threading.Barrier(8)

    def run(job: tuple[int, slice, slice]) -> bool:
        if threading.current_thread().name.endswith("_0") and not barrier.broken:
            try:
                barrier.wait(timeout=5)
            except threading.BrokenBarrierError:
                pass
        f, ys, xs = job
        got = datasets[f].band_data[:, ys, xs].values
        return bool(np.array_equal(got, refs[f][:, ys, xs]))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(run, jobs))


def test_pickled_dataset_holds_no_data_and_reads_in_another_process(tmp_path: Path) -> None:
    data = sample("int16", (1, 200, 300))
    path = write_tif(tmp_path / "p.tif", data, tiled=True, blockxsize=128, blockysize=128)
    ds = xr.open_dataset(path, engine="xrdist", mask_and_scale=False)
    blob = pickle.dumps(ds)
    assert len(blob) < data.nbytes / 4
    script = (
        "import pickle, sys, numpy as np\n"
        "ds = pickle.loads(sys.stdin.buffer.read())\n"
        "print(int(ds.band_data.values.astype('int64').sum()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input=blob, capture_output=True, check=True
    ).stdout
    assert int(out) == int(data.astype("int64").sum())


# -- stacks ----------------------------------------------------------------------------


@pytest.fixture
def scene_stack(tmp_path: Path) -> tuple[list[Path], dict[str, np.ndarray]]:
    """Four dates x two bands, one file each; names carry date and band; files are
    written out of date order."""
    paths, truth = [], {}
    for i, day in enumerate(["20240110", "20240101", "20240120", "20240105"]):
        for band in ("B04", "B08"):
            data = sample("uint16", (1, 300, 400), seed=10 * i + len(band))
            data[:, 50:80, 60:90] = 0  # a cloud
            truth[f"{day}_{band}"] = data
            paths.append(
                write_tif(
                    tmp_path / f"S2_{day}_{band}.tif",
                    data,
                    tiled=True,
                    blockxsize=128,
                    blockysize=128,
                    compress="deflate",
                    nodata=0,
                    tags={"TIFFTAG_DATETIME": f"{day[:4]}:{day[4:6]}:{day[6:]} 10:00:00"},
                )
            )
    return paths, truth


DAYS = ["20240101", "20240105", "20240110", "20240120"]


def test_stack_times_from_file_names_feed_median(scene_stack: Any, tmp_path: Path) -> None:
    ds = xrdist.open_mfdataset(
        str(tmp_path / "*_B04.tif"), times="%Y%m%d", chunks={"time": -1, "y": 128, "x": 128}
    )
    assert list(ds.time.values) == [np.datetime64(f"{d[:4]}-{d[4:6]}-{d[6:]}") for d in DAYS]
    stacked = np.stack([scene_stack[1][f"{d}_B04"] for d in DAYS]).astype("float32")
    stacked[stacked == 0] = np.nan
    expected = np.nanmedian(stacked, axis=0)
    got = ds.band_data.median("time").compute()
    np.testing.assert_allclose(got.values, expected, rtol=1e-6)
    assert ds.band_data.data.npartitions == 3 * 4  # one task per output chunk


def test_stack_times_from_tags_regex_and_list(scene_stack: Any, tmp_path: Path) -> None:
    pattern = str(tmp_path / "*_B08.tif")
    by_tag = xrdist.open_mfdataset(pattern)  # TIFFs default to their DateTime tags
    assert by_tag.time.values[0] == np.datetime64("2024-01-01T10:00")
    by_regex = xrdist.open_mfdataset(pattern, times=r"S2_(\d{8})_")
    assert by_regex.time.values[-1] == np.datetime64("2024-01-20")
    files = sorted(str(p) for p in scene_stack[0] if "B08" in p.name)
    given = [np.datetime64("2000-01-01") + i for i in range(len(files))]
    by_list = xrdist.open_mfdataset(files, times=given, combine="nested")
    assert list(by_list.time.values) == [np.datetime64(t, "ns") for t in given]
    same = xr.open_dataset(pattern, engine="xrdist", times="%Y%m%d")
    np.testing.assert_array_equal(same.time.values, by_regex.time.values)


def test_stack_bands_in_separate_files(scene_stack: Any, tmp_path: Path) -> None:
    pattern = str(tmp_path / "*.tif")
    ds = xrdist.open_mfdataset(pattern, times="%Y%m%d", bands=r"_(B\d\d)\.tif")
    assert set(ds.data_vars) == {"B04", "B08"} and ds.B08.dims == ("time", "y", "x")
    np.testing.assert_array_equal(
        xrdist.open_mfdataset(pattern, times="%Y%m%d", bands=r"_(B\d\d)", mask_and_scale=False)
        .B08.isel(time=2)
        .values,
        scene_stack[1]["20240110_B08"][0],
    )
    joined = xrdist.open_mfdataset(
        pattern, times="%Y%m%d", bands=r"_(B\d\d)\.tif", band_dim=True, chunks={}
    )
    assert list(joined.band.values) == ["B04", "B08"]
    xr.testing.assert_equal(joined.band_data.sel(band="B08", drop=True), ds.B08)


def test_band_missing_a_date_is_named(scene_stack: Any, tmp_path: Path) -> None:
    (tmp_path / "S2_20240120_B08.tif").unlink()
    with pytest.raises(StackError, match=r"B08.*different times \(e\.g\. 2024-01-20T00:00:00 in"):
        xrdist.open_mfdataset(str(tmp_path / "*.tif"), times="%Y%m%d", bands=r"_(B\d\d)")


def test_duplicate_dates_are_named(scene_stack: Any, tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"same time.*pass bands="):
        xrdist.open_mfdataset(str(tmp_path / "*.tif"), times="%Y%m%d")


def test_file_name_without_the_date_is_named(scene_stack: Any, tmp_path: Path) -> None:
    write_tif(tmp_path / "S2_undated_B04.tif", sample("uint16", (1, 300, 400)), nodata=0)
    with pytest.raises(ValueError, match=r"S2_undated_B04\.tif.*no date"):
        xrdist.open_mfdataset(str(tmp_path / "*_B04.tif"), times="%Y%m%d")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"crs": "EPSG:32634"}, r"its CRS is EPSG:32634, not EPSG:32633.*does not reproject"),
        ({"transform": from_origin(600010, 5200000, 20, 20)}, r"its transform .* not on one grid"),
        ({"shape": (1, 300, 401)}, r"its size is 300 x 401 pixels, not 300 x 400"),
        ({"dtype": "int16"}, r"dtype int16, not uint16"),
    ],
    ids=["crs", "transform", "size", "dtype"],
)
def test_scenes_that_do_not_stack_are_named(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    base = {"shape": (1, 300, 400), "dtype": "uint16", "crs": "EPSG:32633"}
    write_tif(tmp_path / "a_20240101.tif", sample(base["dtype"], base["shape"]), crs=base["crs"])
    odd = {**base, **change}
    kwargs = {k: v for k, v in odd.items() if k in ("crs", "transform")}
    write_tif(tmp_path / "b_20240102.tif", sample(odd["dtype"], odd["shape"]), **kwargs)
    with pytest.raises(StackError, match=r"b_20240102\.tif.*" + message):
        xrdist.open_mfdataset(str(tmp_path / "*.tif"), times="%Y%m%d")


@pytest.mark.slow
def test_stack_on_a_local_cluster(scene_stack: Any, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        distributed.Client(cluster),
    ):
        ds = xrdist.open_mfdataset(
            str(tmp_path / "*_B04.tif"), times="%Y%m%d", chunks={"time": -1, "y": 128}
        )
        got = ds.band_data.median("time").compute()
    local = xrdist.open_mfdataset(str(tmp_path / "*_B04.tif"), times="%Y%m%d")
    np.testing.assert_allclose(got.values, local.band_data.median("time").values)


def test_synthetic_cog_stack_matches_its_netcdf_twin(tmp_path: Path) -> None:
    from xrdist.synthetic import write_stack

    cogs = write_stack(tmp_path / "cog", dates=3, size=96, tile=32, file_format="cog")
    ncs = write_stack(tmp_path / "nc", dates=3, size=96, tile=32)
    from_cogs = xrdist.open_mfdataset(cogs).band_data.isel(band=0, drop=True)
    from_ncs = xrdist.open_mfdataset(ncs).refl
    np.testing.assert_allclose(from_cogs.values, from_ncs.values, atol=6e-5)  # uint16 packing
    np.testing.assert_array_equal(from_cogs.time.values, from_ncs.time.values)  # DateTime tags
    ref = rioxarray.open_rasterio(cogs[0], mask_and_scale=True)
    assert ref.rio.crs.to_epsg() == 32633
    np.testing.assert_allclose(ref.values[0], from_ncs.values[0], atol=6e-5)
    assert xr.open_dataset(cogs[0], engine="xrdist").band_data.encoding["overviews"] == 1
