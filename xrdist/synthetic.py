"""A synthetic satellite stack: one file per date (netCDF or COG), clouds as nodata, a
real CRS.

Each date is a smooth surface (the "ground") plus per-date noise, stored as ``uint16``
reflectance with ``scale_factor=1e-4`` and ``_FillValue=0``; about a fifth of each date is
covered by blobs of cloud written as the fill value. Coordinates are pixel centres of a
UTM grid (EPSG:32633, 30 m pixels) and a ``spatial_ref`` variable carries the CRS as CF
grid-mapping attributes and WKT, the way rioxarray writes it. A cloud-free median over
time recovers the surface: the job xrdist exists for.

Layouts: ``tiles`` (zlib+shuffle, on-disk chunks of ``tile`` x ``tile``), ``whole`` (one
compressed chunk per date) and ``contiguous`` (uncompressed).

``file_format="cog"`` writes the same values as Cloud-Optimized GeoTIFFs instead (one band
``uint16``, deflate with horizontal differencing, ``tile`` x ``tile`` tiles, overviews by
2x decimation, GeoTIFF keys for EPSG:32633, GDAL's nodata, scale and DateTime tags), read
the same by GDAL, rioxarray and xrdist. Only the ``tiles`` layout applies to COGs.

Notes
-----
Pure functions of their arguments (a seeded generator): the same call writes the same
bytes. Not thread-safe for one folder (it writes files).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

SCALE = np.float32(1e-4)
PIXEL = 30.0
ORIGIN = (500_000.0, 5_000_000.0)  # upper-left corner, metres (UTM zone 33N)
LAYOUTS = ("tiles", "whole", "contiguous")
FORMATS = ("netcdf", "cog")
EPSG = 32633
CRS_WKT = (
    'PROJCS["WGS 84 / UTM zone 33N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",'
    '6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",15],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],'
    'AUTHORITY["EPSG","32633"]]'
)


def surface(size: int) -> np.ndarray:
    """The cloud-free ground reflectance, smooth, between about 0.05 and 0.55."""
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    return (
        0.3
        + 0.15 * np.sin(6 * x) * np.cos(4 * y)
        + 0.1 * np.exp(-((x - 0.6) ** 2 + (y - 0.4) ** 2) / 0.02)
    ).astype(np.float32)


def clouds(rng: np.random.Generator, size: int, fraction: float = 0.2) -> np.ndarray:
    """A boolean cloud mask: round blobs added until they cover about ``fraction``."""
    y, x = np.ogrid[:size, :size]
    mask = np.zeros((size, size), dtype=bool)
    while mask.mean() < fraction:
        cy, cx = rng.integers(0, size, 2)
        radius = rng.uniform(0.04, 0.12) * size
        mask |= (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    return mask


def spatial_ref() -> xr.DataArray:
    return xr.DataArray(
        0,
        attrs={
            "crs_wkt": CRS_WKT,
            "spatial_ref": CRS_WKT,
            "grid_mapping_name": "transverse_mercator",
            "longitude_of_central_meridian": 15.0,
            "latitude_of_projection_origin": 0.0,
            "scale_factor_at_central_meridian": 0.9996,
            "false_easting": 500000.0,
            "false_northing": 0.0,
            "GeoTransform": f"{ORIGIN[0]} {PIXEL} 0 {ORIGIN[1]} 0 {-PIXEL}",
        },
    )


def write_cog(path: str, values: np.ndarray, time: pd.Timestamp, tile: int) -> None:
    """One date as a COG: ``values`` (reflectance, NaN for clouds; ``(y, x)`` or
    ``(band, y, x)``) packed to uint16, bands as separate planes."""
    import tifffile

    packed = np.where(np.isnan(values), 0, np.round(values / SCALE)).astype(np.uint16)
    bands = 1 if packed.ndim == 2 else packed.shape[0]
    geokeys = [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, EPSG]
    items = "".join(
        f'<Item name="SCALE" sample="{b}" role="scale">{float(SCALE)!r}</Item>'
        f'<Item name="OFFSET" sample="{b}" role="offset">0</Item>'
        for b in range(bands)
    )
    metadata = f"<GDALMetadata>{items}</GDALMetadata>"
    tags = [
        (33550, "d", 3, (PIXEL, PIXEL, 0.0), True),  # ModelPixelScale
        (33922, "d", 6, (0.0, 0.0, 0.0, ORIGIN[0], ORIGIN[1], 0.0), True),  # ModelTiepoint
        (34735, "H", len(geokeys), geokeys, True),  # GeoKeyDirectory
        (42112, "s", 0, metadata, True),  # GDAL_METADATA
        (42113, "s", 0, "0", True),  # GDAL_NODATA
    ]
    side = min(tile, max(16, 16 * (packed.shape[-2] // 16)))
    options = {"compression": "zlib", "predictor": True, "tile": (side, side), "metadata": None}
    if bands > 1:
        options.update(photometric="minisblack", planarconfig="separate")
    with tifffile.TiffWriter(path) as tif:
        tif.write(packed, datetime=time.to_pydatetime(), extratags=tags, **options)
        level = packed
        while min(level.shape[-2:]) >= 2 * side:  # overviews, as COGs carry them
            level = level[..., ::2, ::2]
            tif.write(level, subfiletype=1, extratags=tags[3:], **options)


def write_stack(
    folder: str | os.PathLike[str],
    dates: int = 48,
    size: int = 512,
    layout: str = "tiles",
    tile: int = 256,
    seed: int = 0,
    file_format: str = "netcdf",
    bands: int = 1,
) -> list[str]:
    """Write (or reuse, if complete) a stack of ``dates`` files; returns their paths.
    netCDF files are named ``scene_YYYYMMDD.nc``, COGs ``scene_YYYYMMDD.tif``.

    ``bands`` > 1 writes that many spectral bands per date (each a brighter copy of the
    ground): a ``band`` dimension in netCDF (``refl(time, band, y, x)``, one band per
    on-disk chunk), separate planes in a COG.
    """
    if bands < 1:
        raise ValueError(f"bands must be at least 1, not {bands}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if file_format not in FORMATS:
        raise ValueError(f"file_format must be one of {FORMATS}, not {file_format!r}")
    if file_format == "cog" and layout != "tiles":
        raise ValueError(f"COGs are tiled: layout={layout!r} applies to netCDF only")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    times = pd.date_range("2024-04-01", periods=dates, freq="5D")
    suffix = ".tif" if file_format == "cog" else ".nc"
    paths = [str(folder / f"scene_{t:%Y%m%d}{suffix}") for t in times]
    marker = folder / f".complete-{dates}-{size}-{layout}-{tile}-{seed}-{file_format}-{bands}"
    if marker.exists() and all(os.path.exists(p) for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    ground = surface(size)
    if bands > 1:
        ground = np.stack([ground * np.float32(1 + 0.25 * b) for b in range(bands)])
    x = ORIGIN[0] + PIXEL * (np.arange(size) + 0.5)
    y = ORIGIN[1] - PIXEL * (np.arange(size) + 0.5)
    encoding = {"dtype": "uint16", "scale_factor": SCALE, "_FillValue": 0}
    if layout == "tiles":
        side = min(tile, size)
        encoding.update(zlib=True, complevel=1, shuffle=True, chunksizes=(1, side, side))
    elif layout == "whole":
        encoding.update(zlib=True, complevel=1, shuffle=True, chunksizes=(1, size, size))
    else:
        encoding.update(contiguous=True)
    if bands > 1 and "chunksizes" in encoding:  # one band per on-disk chunk
        encoding["chunksizes"] = (1, 1, *encoding["chunksizes"][1:])
    dims = ("time", "band", "y", "x") if bands > 1 else ("time", "y", "x")
    band = {"band": np.arange(1, bands + 1)} if bands > 1 else {}
    for time, path in zip(times, paths, strict=True):
        values = ground + rng.normal(0, 0.01, ground.shape).astype(np.float32)
        values[..., clouds(rng, size)] = np.nan
        if file_format == "cog":
            write_cog(path, values, time, tile)
            continue
        ds = xr.Dataset(
            {
                "refl": (
                    dims,
                    values[None],
                    {"long_name": "surface reflectance", "grid_mapping": "spatial_ref"},
                ),
            },
            coords={"time": [time], **band, "y": y, "x": x, "spatial_ref": spatial_ref()},
            attrs={"title": "xrdist synthetic satellite stack", "date": f"{time:%Y-%m-%d}"},
        )
        ds.x.attrs = {"standard_name": "projection_x_coordinate", "units": "m"}
        ds.y.attrs = {"standard_name": "projection_y_coordinate", "units": "m"}
        ds.time.encoding = {"units": "days since 2024-01-01", "dtype": "int32"}
        ds.to_netcdf(path, engine="netcdf4", encoding={"refl": encoding})
    marker.touch()
    return paths
