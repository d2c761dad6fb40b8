"""Reliability: stacks that do not fit together are named, never silently combined.

Each case writes a real stack with :func:`xrdist.synthetic.write_stack` (netCDF-4 or COG),
spoils one file in one way (another variable, shape, dtype, CRS, scale, grid, format; a
missing or a duplicated date) and opens the stack with :func:`xrdist.open_mfdataset`.
Either the error names the odd file (and the first file it was compared with) and says
what differs, or, where the files do stack (a date missing from a regular series,
duplicated dates with ``combine="nested"``), the result is what the files hold and any
duplicate is named in a :class:`xrdist.StackWarning`.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np
import pandas as pd
import pytest
import tifffile
import xarray as xr
from pyproj import CRS

import xrdist
from xrdist.synthetic import ORIGIN, PIXEL, SCALE, write_stack

pytestmark = pytest.mark.reliability

DATES, SIZE, TILE = 4, 32, 16
ODD = 2  # the index of the spoiled file
TIMES = pd.date_range("2024-04-01", periods=DATES, freq="5D")  # as write_stack writes them


@pytest.fixture(scope="module")
def nc_stack(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return write_stack(tmp_path_factory.mktemp("nc"), dates=DATES, size=SIZE, tile=TILE)


@pytest.fixture(scope="module")
def cog_stack(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("cog")
    return write_stack(folder, dates=DATES, size=SIZE, tile=TILE, file_format="cog")


def copy_stack(paths: list[str], folder: Path) -> list[str]:
    """A copy of the stack in ``folder`` (each case spoils its own copy)."""
    folder.mkdir(parents=True)
    return [str(shutil.copy(p, folder / Path(p).name)) for p in paths]


def rewrite(path: str, change: Callable[[xr.Dataset], xr.Dataset]) -> None:
    """Rewrite one netCDF file with ``change`` applied (its encoding kept)."""
    with xr.open_dataset(path, engine="netcdf4") as src:
        ds = src.load()
    change(ds).to_netcdf(path, engine="netcdf4")


def _encoded(ds: xr.Dataset, name: str, **encoding: Any) -> xr.Dataset:
    ds[name].encoding.update(encoding)
    return ds


def _crs(ds: xr.Dataset, epsg: int) -> xr.Dataset:
    wkt = CRS.from_epsg(epsg).to_wkt()
    ds.spatial_ref.attrs.update(crs_wkt=wkt, spatial_ref=wkt)
    return ds


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _not_netcdf(path: str) -> None:
    Path(path).write_text("date,refl\n2024-04-11,0.3\n")


def _netcdf3(path: str) -> None:
    with xr.open_dataset(path, engine="netcdf4") as src:
        ds = src.load()
    ds.to_netcdf(path, format="NETCDF3_64BIT", engine="netcdf4")


# (id, how file ODD is spoiled, error type, words the message must hold after the paths)
NETCDF_CASES: list[tuple[str, Callable[[str], None], type[Exception], str]] = [
    (
        "missing-variable",
        lambda p: rewrite(p, lambda ds: ds.rename_vars(refl="reflectance")),
        xrdist.StackError,
        r"lacks variables \['refl'\] and it has extra variables \['reflectance'\]",
    ),
    (
        "extra-variable",
        lambda p: rewrite(p, lambda ds: ds.assign(qa=ds.refl.isnull())),
        xrdist.StackError,
        r"has extra variables \['qa'\]",
    ),
    (
        "shape",
        lambda p: rewrite(p, lambda ds: ds.isel(x=slice(0, SIZE // 2))),
        xrdist.StackError,
        rf"variable 'refl' has shape \(1, {SIZE}, {SIZE // 2}\), not \(1, {SIZE}, {SIZE}\)",
    ),
    (
        "dtype",
        lambda p: rewrite(p, lambda ds: _encoded(ds, "refl", dtype="int16")),
        xrdist.StackError,
        r"variable 'refl' has dtype int16, not uint16",
    ),
    (
        "crs",
        lambda p: rewrite(p, lambda ds: _crs(ds, 32634)),
        xrdist.StackError,
        r"its CRS is EPSG:32634, not EPSG:32633. xrdist does not reproject",
    ),
    (
        "scale",
        lambda p: rewrite(p, lambda ds: _encoded(ds, "refl", scale_factor=np.float32(2e-4))),
        xrdist.StackError,
        r"variable 'refl' decodes differently: scale_factor=",
    ),
    (
        "grid",
        lambda p: rewrite(p, lambda ds: ds.assign_coords(x=ds.x + PIXEL)),
        xrdist.StackError,
        r"variable 'x' \(which does not have 'time'\) has different values",
    ),
    (
        "netcdf3",
        _netcdf3,
        xrdist.StackError,
        r"variable 'refl' has dtype int16, not uint16 \(it is a NETCDF3_64BIT_OFFSET file, "
        r"the first a NETCDF4 file\)",
    ),
    ("not-netcdf", _not_netcdf, ValueError, r"is not a netCDF, HDF5 or TIFF file"),
    ("truncated", _truncate, OSError, r"truncated file"),
]


@pytest.mark.parametrize(
    ("spoil", "error", "words"),
    [case[1:] for case in NETCDF_CASES],
    ids=[case[0] for case in NETCDF_CASES],
)
def test_netcdf_stack_that_does_not_stack_names_the_file(
    nc_stack: list[str],
    tmp_path: Path,
    figures: Any,
    spoil: Callable[[str], None],
    error: type[Exception],
    words: str,
) -> None:
    """One spoiled file of a netCDF stack: an error of the documented type that names the
    file (and, for a stacking error, the first file it was compared with) and says what
    differs; never a dataset."""
    paths = copy_stack(nc_stack, tmp_path / "stack")
    spoil(paths[ODD])
    with pytest.raises(error) as caught:
        xrdist.open_mfdataset(paths, chunks={"time": -1, "y": TILE, "x": TILE})
    message = str(caught.value)
    assert paths[ODD] in message, message
    if error is xrdist.StackError:
        assert paths[0] in message, message
    assert re.search(words, message), message
    figures.unit, figures.operations, figures.files, figures.faults = "opens", 1, len(paths), 1


def _cog_with(path: str, dtype: str = "uint16", size: int = SIZE, epsg: int = 32633) -> None:
    """Overwrite one COG of the stack with GDAL's version of it, changed as asked."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    with rasterio.open(path) as src:
        data, tags = src.read(), src.tags()
    data = np.resize(data, (1, size, size)).astype(dtype)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": dtype,
        "crs": f"EPSG:{epsg}",
        "transform": from_origin(*ORIGIN, PIXEL, PIXEL),
        "nodata": 0,
        "tiled": True,
        "blockxsize": TILE,
        "blockysize": TILE,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)


COG_CASES: list[tuple[str, Callable[[str], None], str]] = [
    ("crs", lambda p: _cog_with(p, epsg=32634), r"its CRS is EPSG:32634, not EPSG:32633"),
    ("size", lambda p: _cog_with(p, size=SIZE + TILE), rf"its size is {SIZE + TILE} x"),
    ("dtype", lambda p: _cog_with(p, dtype="int16"), r"'band_data' has dtype int16, not uint16"),
]


@pytest.mark.parametrize(
    ("spoil", "words"), [case[1:] for case in COG_CASES], ids=[case[0] for case in COG_CASES]
)
def test_cog_stack_that_does_not_stack_names_the_file(
    cog_stack: list[str], tmp_path: Path, figures: Any, spoil: Callable[[str], None], words: str
) -> None:
    """One COG of another CRS, size or dtype: a StackError naming it, the first file and
    what differs (scenes are never reprojected or resampled silently)."""
    paths = copy_stack(cog_stack, tmp_path / "stack")
    spoil(paths[ODD])
    with pytest.raises(xrdist.StackError) as caught:
        xrdist.open_mfdataset(paths)
    message = str(caught.value)
    assert paths[ODD] in message and paths[0] in message, message
    assert re.search(words, message), message
    figures.unit, figures.operations, figures.files, figures.faults = "opens", 1, len(paths), 1


def reference_median(paths: list[str], file_format: str) -> np.ndarray:
    """The median over time of a stack, read with netCDF4 or tifffile directly (fill
    values masked, scale applied)."""
    stacked = []
    for path in paths:
        if file_format == "netcdf":
            with netCDF4.Dataset(path) as nc:
                stacked.append(np.ma.filled(nc["refl"][0].astype("f8"), np.nan))
        else:
            raw = tifffile.imread(path).astype("f8")
            stacked.append(np.where(raw == 0, np.nan, raw * float(SCALE)))
    return np.nanmedian(np.stack(stacked), axis=0)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
@pytest.mark.parametrize("file_format", ["netcdf", "cog"])
def test_a_missing_date_is_not_filled_in(
    nc_stack: list[str], cog_stack: list[str], file_format: str, figures: Any
) -> None:
    """A date missing from a regular 5-day series is not an error (a stack need not be
    regular): the times come out as the files give them, no gap is filled, nothing
    warns, and the median is over the files present."""
    stack = nc_stack if file_format == "netcdf" else cog_stack
    given = [p for i, p in enumerate(stack) if i != ODD]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xrdist.open_mfdataset(given, chunks={"time": -1, "y": TILE, "x": TILE})
    expected_times = TIMES.delete(ODD).values
    np.testing.assert_array_equal(ds.time.values, expected_times)
    steps = np.diff(ds.time.values).astype("timedelta64[D]").astype(int).tolist()
    assert steps == [5, 10][: len(given) - 1] + [5] * (len(given) - 3)
    variable = ds.refl if file_format == "netcdf" else ds.band_data.isel(band=0)
    got = variable.median("time").compute().values
    np.testing.assert_allclose(got, reference_median(given, file_format), rtol=1e-6)
    figures.unit, figures.operations, figures.files = "computes", 1, len(given)


def _copy_as(path: str, folder: Path, name: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return str(shutil.copy(path, folder / name))


@pytest.mark.parametrize("file_format", ["netcdf", "cog"])
def test_duplicate_dates_by_coords_are_an_error_naming_both_files(
    nc_stack: list[str], cog_stack: list[str], file_format: str, tmp_path: Path, figures: Any
) -> None:
    """A copy of one date under another name, with ``combine="by_coords"``: a StackError
    that names the file and its copy (and the date)."""
    stack = nc_stack if file_format == "netcdf" else cog_stack
    copy = _copy_as(stack[1], tmp_path / "copies", "copy_" + Path(stack[1]).name)
    with pytest.raises(xrdist.StackError) as caught:
        xrdist.open_mfdataset([*stack, copy])
    message = str(caught.value)
    assert stack[1] in message and copy in message, message
    assert re.search(r"overlap|same time", message) and "2024-04-06" in message, message
    figures.unit, figures.operations, figures.files = "opens", 1, len(stack) + 1


@pytest.mark.parametrize("how", ["given-twice", "copy"])
@pytest.mark.parametrize("file_format", ["netcdf", "cog"])
def test_duplicate_dates_nested_warn_naming_both_files(
    nc_stack: list[str],
    cog_stack: list[str],
    file_format: str,
    how: str,
    tmp_path: Path,
    figures: Any,
) -> None:
    """``combine="nested"`` keeps the order given, as xarray does, so duplicates are not
    an error; but a StackWarning names both files holding the date (xarray says nothing),
    and the stack holds exactly the files given."""
    stack = nc_stack if file_format == "netcdf" else cog_stack
    second = stack[1] if how == "given-twice" else _copy_as(stack[1], tmp_path, "copy.x")
    paths = [stack[0], stack[1], second, *stack[2:]]
    times = None if file_format == "netcdf" else list(TIMES.insert(2, TIMES[1]).values)
    with pytest.warns(xrdist.StackWarning) as caught:
        ds = xrdist.open_mfdataset(paths, combine="nested", concat_dim="time", times=times)
    message = str(caught[0].message)
    assert stack[1] in message and second in message and "2024-04-06" in message, message
    if how == "given-twice":
        assert "the same file, given twice" in message, message
    assert ds.sizes["time"] == len(paths)
    assert (ds.time.values == TIMES[1].to_datetime64()).sum() == 2
    figures.unit, figures.operations, figures.files = "opens", 1, len(paths)


def test_a_date_repeated_inside_one_file_warns_naming_it(
    nc_stack: list[str], tmp_path: Path, figures: Any
) -> None:
    """A file that holds one date twice (an append that ran twice): a StackWarning that
    names the file; the values are kept as the file holds them."""
    paths = copy_stack(nc_stack, tmp_path / "stack")
    rewrite(paths[0], lambda ds: xr.concat([ds, ds], "time"))
    with pytest.warns(xrdist.StackWarning, match=re.escape(f"{paths[0]!r} holds it twice")):
        ds = xrdist.open_mfdataset(paths)
    assert ds.sizes["time"] == DATES + 1
    figures.unit, figures.operations, figures.files = "opens", 1, len(paths)


def test_two_files_on_different_grids_name_the_file_where_each_dimension_differs(
    nc_stack: list[str], tmp_path: Path, figures: Any
) -> None:
    """With two files, which dimension is the stack cannot be told when two differ: the
    error names, for each, the file where it differs from the first."""
    paths = copy_stack(nc_stack[:2], tmp_path / "stack")
    rewrite(paths[1], lambda ds: ds.assign_coords(x=ds.x + PIXEL))
    with pytest.raises(xrdist.StackError) as caught:
        xrdist.open_mfdataset(paths)
    message = str(caught.value)
    assert f"'time' in {paths[1]!r}; 'x' in {paths[1]!r}" in message, message
    assert paths[0] in message and "Pass concat_dim=" in message, message
    figures.unit, figures.operations, figures.files, figures.faults = "opens", 1, len(paths), 1
