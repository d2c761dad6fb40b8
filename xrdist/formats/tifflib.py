"""GeoTIFF and Cloud-Optimized GeoTIFF: tiles read by byte range, decoded outside any lock.

A TIFF file is parsed once per handle with :mod:`tifffile` (header, image file
directories, GeoTIFF tags, GDAL's metadata and nodata tags). Reads never go through a
library handle: the tiles (or strips) a window touches are fetched with positional reads
(``os.pread``, no shared file position, no lock) and decoded in the reading thread by
tifffile's decoder for the image (imagecodecs: deflate, LZW, zstd, JPEG, WebP, LERC...,
predictors 2 and 3), so reads of one or many files run on every core. GDAL is not used.

A file holds one image and its reduced-resolution overviews; ``group`` selects which
(``None``: full resolution; ``"overview/0"``: the first overview, as rioxarray's
``overview_level=0``). The image is described as rioxarray describes it: a variable
``band_data`` with dims ``(band, y, x)``, ``x``/``y`` pixel-centre coordinates, a
``spatial_ref`` coordinate with the CRS, nodata as ``_FillValue``, ``scale_factor`` and
``add_offset``, band descriptions as ``long_name``.

Notes
-----
Thread-safe: the tile index of an image is built once per handle under the file's lock
(tifffile parses directories lazily through a seeking file object); reads after that
share nothing mutable. Handles are :class:`tifffile.TiffFile` objects in the handle
manager; proxies pickle as (opener, path).
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np
import tifffile

from xrdist.array import run_in_readers
from xrdist.byterange import CorruptChunkError
from xrdist.description import FileDescription, VariableDescription
from xrdist.georef import (
    IDENTITY,
    affine_from_tags,
    crs_attrs,
    epsg_code,
    is_point,
    pixel_centres,
)
from xrdist.identity import FileIdentity
from xrdist.locks import file_lock
from xrdist.proxy import HandleProxy
from xrdist.window import BoxReader

LIBRARY = "tifffile"
#: The name of the image variable (as rioxarray's xarray backend names it).
VARIABLE = "band_data"
OVERVIEW_PREFIX = "overview/"

#: TIFF tags GDAL reports as metadata (rioxarray shows them as attributes).
TAG_ATTRS = {
    269: "TIFFTAG_DOCUMENTNAME",
    270: "TIFFTAG_IMAGEDESCRIPTION",
    305: "TIFFTAG_SOFTWARE",
    306: "TIFFTAG_DATETIME",
    315: "TIFFTAG_ARTIST",
    316: "TIFFTAG_HOSTCOMPUTER",
    33432: "TIFFTAG_COPYRIGHT",
}
GDAL_METADATA, GDAL_NODATA = 42112, 42113

#: What decodes each compression, for the error when it cannot be decoded here.
CODEC_PACKAGES = "imagecodecs (pip install imagecodecs)"


class NotGeoreferencedWarning(UserWarning):
    """A TIFF without georeferencing was opened with pixel-index coordinates."""


def open_tiff(path: str, mode: str = "r") -> tifffile.TiffFile:
    """Open a TIFF for reading (the handle manager's opener; TIFFs are read-only here)."""
    if mode != "r":
        raise ValueError(f"{path!r}: TIFF files are opened read-only, not mode={mode!r}")
    try:
        return tifffile.TiffFile(path)
    except (tifffile.TiffFileError, *PARSE_ERRORS) as err:
        raise _unreadable(path, err) from err


#: What tifffile raises on damaged tags besides TiffFileError (found by fuzzing).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, struct.error, OverflowError)


def _unreadable(path: str, err: Exception) -> ValueError:
    kind = "" if isinstance(err, tifffile.TiffFileError) else f"{type(err).__name__}: "
    return ValueError(f"{path!r} is not a readable TIFF file: {kind}{err}")


def proxy(path: str) -> HandleProxy:
    """The picklable handle proxy of ``path`` for this library."""
    return HandleProxy.create(open_tiff, path, mode="r")


def overview_group(level: int | None) -> str | None:
    """The ``group`` that selects overview ``level`` (None: full resolution)."""
    if level is None:
        return None
    if not isinstance(level, int | np.integer) or level < 0:
        raise ValueError(f"overview_level must be None or an integer >= 0, not {level!r}")
    return f"{OVERVIEW_PREFIX}{int(level)}"


def _level(group: str | None) -> int:
    """Image index in the file: 0 for full resolution, 1 + overview level otherwise."""
    if group in (None, "", "/"):
        return 0
    if group.startswith(OVERVIEW_PREFIX) and group[len(OVERVIEW_PREFIX) :].isdigit():
        return 1 + int(group[len(OVERVIEW_PREFIX) :])
    raise ValueError(f"a TIFF has no group {group!r}; use overview_level= to read an overview")


def _images(handle: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The full-resolution image and its overviews, largest first (tifffile parses the
    directories now: damaged ones raise a ValueError naming the file)."""
    try:
        series = handle.series[0]
        return [level.keyframe for level in series.levels]
    except (tifffile.TiffFileError, *PARSE_ERRORS) as err:
        raise _unreadable(handle.filehandle.path, err) from err


# ---------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tiles:
    """Where each tile (or strip) of one image is, and how to decode it.

    ``shape`` is (bands, height, width); tiles are ``tile`` = (rows, columns) and hold
    every band (``planar=False``, pixel-interleaved) or one (``planar=True``). The
    TIFF order of segments is plane, tile row, tile column.
    """

    path: str
    shape: tuple[int, int, int]
    tile: tuple[int, int]
    planar: bool
    dtype: np.dtype
    fill_value: Any
    compression: str
    offsets: np.ndarray
    sizes: np.ndarray
    decode: Any  # tifffile's decoder for the image: (bytes, index, **kw) -> segment
    decode_kwargs: dict[str, Any]

    @property
    def grid(self) -> tuple[int, int]:
        return (-(-self.shape[1] // self.tile[0]), -(-self.shape[2] // self.tile[1]))

    def _where(self, index: int, what: str) -> str:
        return f"{self.path!r}, variable {VARIABLE!r}, tile {index}: {what}"

    def _segment(self, fd: int, index: int) -> np.ndarray | None:
        """One decoded segment, (rows, columns, bands in it); None if not stored."""
        offset, size = int(self.offsets[index]), int(self.sizes[index])
        if size == 0 or offset == 0:
            return None
        raw = os.pread(fd, size, offset)
        if len(raw) != size:
            raise CorruptChunkError(
                self._where(index, f"file ends after {len(raw)} of {size} bytes (truncated?)")
            )
        try:
            segment, _, _ = self.decode(raw, index, **self.decode_kwargs)
        except Exception as err:
            raise CorruptChunkError(
                self._where(index, f"failed to decode ({self.compression}): {err!r}")
            ) from err
        return np.asarray(segment).reshape(segment.shape[-3:])

    def read_box(self, fd: int, box: tuple[slice, slice, slice]) -> np.ndarray:
        """The values in ``box`` (unit-step slices over band, y, x)."""
        bands, rows, cols = box
        out = np.empty([s.stop - s.start for s in box], dtype=self.dtype)
        if out.size == 0:
            return out
        th, tw = self.tile
        down, across = self.grid
        band_ids = range(bands.start, bands.stop)
        planes = band_ids if self.planar else [None]
        jobs = [
            (plane, ty, tx)
            for plane in planes
            for ty in range(rows.start // th, (rows.stop - 1) // th + 1)
            for tx in range(cols.start // tw, (cols.stop - 1) // tw + 1)
        ]

        def read_tile(job: tuple[int | None, int, int]) -> None:
            plane, ty, tx = job
            index = (plane or 0) * down * across + ty * across + tx
            y0, x0 = ty * th, tx * tw
            ya, yb = max(rows.start, y0), min(rows.stop, y0 + th)
            xa, xb = max(cols.start, x0), min(cols.stop, x0 + tw)
            dst_y, dst_x = (
                slice(ya - rows.start, yb - rows.start),
                slice(xa - cols.start, xb - cols.start),
            )
            dst_b = (
                slice(None)
                if plane is None
                else slice(plane - bands.start, plane - bands.start + 1)
            )
            segment = self._segment(fd, index)
            if segment is None:
                out[dst_b, dst_y, dst_x] = self.fill_value
                return
            window = segment[ya - y0 : yb - y0, xa - x0 : xb - x0]
            if plane is None:
                window = window[..., bands.start : bands.stop]
            out[dst_b, dst_y, dst_x] = np.moveaxis(window, -1, 0)

        run_in_readers(read_tile, jobs)
        return out


def _build_tiles(page: tifffile.TiffPage, path: str) -> Tiles:
    bands = int(page.samplesperpixel)
    if page.is_tiled:
        tile = (int(page.tilelength), int(page.tilewidth))
    else:
        tile = (min(int(page.rowsperstrip), int(page.imagelength)), int(page.imagewidth))
    kwargs: dict[str, Any] = {}
    if page.compression in (6, 7, 34892, 33007):  # JPEG variants: shared tables
        kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
    nodata = _nodata(page)
    shape = (bands, int(page.imagelength), int(page.imagewidth))
    planar = bands > 1 and int(page.planarconfig) == 2
    planes = bands if planar else 1
    expected = planes * -(-shape[1] // max(1, tile[0])) * -(-shape[2] // max(1, tile[1]))
    stored = len(page.dataoffsets)
    if min(tile) < 1 or stored != expected or len(page.databytecounts) != stored:
        raise ValueError(
            f"{path!r} is not a readable TIFF file: its image of {shape[1]} x {shape[2]} "
            f"pixels in {'tiles' if page.is_tiled else 'strips'} of {tile[0]} x {tile[1]} "
            f"needs {expected} of them, but it lists {stored} (damaged tags?)"
        )
    return Tiles(
        path=path,
        shape=shape,
        tile=tile,
        planar=planar,
        dtype=np.dtype(page.dtype),
        fill_value=0 if nodata is None else nodata,  # of tiles never written (sparse)
        compression=_compression_name(page),
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        sizes=np.asarray(page.databytecounts, dtype=np.int64),
        decode=_decoder(page, path),
        decode_kwargs=kwargs,
    )


# Per open handle: image index -> Tiles. Weak keys: an entry dies with its handle, so a
# reopened (possibly rewritten) file is indexed afresh.
_tiles: weakref.WeakKeyDictionary[tifffile.TiffFile, dict[int, Tiles]] = weakref.WeakKeyDictionary()
_tiles_lock = threading.Lock()


def tiles(handle: tifffile.TiffFile, group: str | None) -> Tiles:
    """The tile index of one image of an open file, built once per handle."""
    level = _level(group)
    with _tiles_lock:
        found = _tiles.get(handle, {}).get(level)
    if found is None:
        with file_lock(handle.filehandle.path):  # tifffile seeks to parse directories
            found = _build_tiles(_images(handle)[level], handle.filehandle.path)
        with _tiles_lock:
            _tiles.setdefault(handle, {})[level] = found
    return found


def byte_range_reader(handle: tifffile.TiffFile, group: str | None, name: str) -> BoxReader | None:
    """A :class:`~xrdist.window.BoxReader` (``reader(key) -> band_data[key]``, or
    ``reader.read_box(box)``) that reads through ``handle`` with no tifffile call (its
    tile offsets already known: positional reads and decoding only), or None. A stale
    handle then yields at worst wrong bytes, which the caller's check
    of the file after the read catches. Makes no call into tifffile; thread-safe."""
    if name != VARIABLE:
        return None
    try:
        level = _level(group)
    except ValueError:
        return None
    with _tiles_lock:
        index = _tiles.get(handle, {}).get(level)
    if index is None:
        return None
    return BoxReader(index, handle.filehandle.fileno())


def read(handle: tifffile.TiffFile, group: str | None, name: str, key: tuple[Any, ...]) -> Any:
    """``band_data[key]`` (outer indexing): only the tiles the window touches are read."""
    if name != VARIABLE:
        raise KeyError(f"{handle.filehandle.path!r} has no variable {name!r}")
    return BoxReader(tiles(handle, group), handle.filehandle.fileno())(key)


# --------------------------------------------------------------------- description


def _compression_name(page: tifffile.TiffPage) -> str:
    try:
        name = tifffile.COMPRESSION(page.compression).name.lower()
        return {"adobe_deflate": "deflate"}.get(name, name)
    except ValueError:
        return f"compression {int(page.compression)}"


def _decoder(page: tifffile.TiffPage, path: str) -> Any:
    """tifffile's decoder of the image, or a clear error naming the codec."""
    try:
        if page.compression != 1 and page.compression not in tifffile.TIFF.DECOMPRESSORS:
            raise ValueError("no decoder is installed for it")
        return page.decode
    except Exception as err:
        raise ValueError(
            f"{path!r} uses {_compression_name(page)} (TIFF compression "
            f"{int(page.compression)}), which cannot be decoded here: {err}. Decoders come "
            f"from {CODEC_PACKAGES}; a newer version may support it."
        ) from err


def _nodata(page: tifffile.TiffPage) -> Any:
    """GDAL's nodata value of the image, in its dtype, or None."""
    tag = page.tags.get(GDAL_NODATA)
    if tag is None:
        return None
    text = str(tag.value).strip().rstrip("\x00")
    value = float(text)
    dtype = np.dtype(page.dtype)
    if dtype.kind in "iu":
        return dtype.type(int(value)) if value.is_integer() else None
    return dtype.type(value)


def _gdal_metadata(page: tifffile.TiffPage) -> tuple[dict[str, Any], dict[str, dict[int, str]]]:
    """GDAL's metadata tag: dataset items, and band items by role (scale, offset,
    description, unittype) then band index."""
    tag = page.tags.get(GDAL_METADATA)
    dataset: dict[str, Any] = {}
    bands: dict[str, dict[int, str]] = {}
    if tag is None:
        return dataset, bands
    try:
        root = ET.fromstring(str(tag.value))
    except ET.ParseError:
        return dataset, bands
    for item in root.iter("Item"):
        name, text = item.get("name", ""), item.text or ""
        if item.get("sample") is None:
            dataset[name] = text
        else:
            role = item.get("role") or name.lower()
            bands.setdefault(role, {})[int(item.get("sample", 0))] = text
    return dataset, bands


def _per_band(values: dict[int, str], count: int, default: float) -> list[float]:
    return [float(values.get(b, default)) for b in range(count)]


def _decodes_to_float32(dtype: np.dtype) -> bool:
    return dtype == np.float32 or (dtype.kind in "iu" and dtype.itemsize <= 2)


def _band_attrs(page: tifffile.TiffPage, bands: int, geokeys: dict[str, Any]) -> dict[str, Any]:
    """Attributes of ``band_data`` as rioxarray gives them."""
    attrs: dict[str, Any] = {}
    for code, name in TAG_ATTRS.items():
        tag = page.tags.get(code)
        if tag is not None:
            attrs[name] = str(tag.value)
    dataset, per_band = _gdal_metadata(page)
    attrs.update(dataset)
    attrs["AREA_OR_POINT"] = "Point" if is_point(geokeys) else "Area"
    nodata = _nodata(page)
    if nodata is not None:
        attrs["_FillValue"] = nodata
    scales = _per_band(per_band.get("scale", {}), bands, 1.0)
    offsets = _per_band(per_band.get("offset", {}), bands, 0.0)
    if np.dtype(page.dtype).kind == "c" and set(scales) == {1.0} and set(offsets) == {0.0}:
        pass  # xarray's scaling would drop the imaginary part; rioxarray keeps it
    elif len(set(scales)) == 1 and len(set(offsets)) == 1:
        # Typed so that xarray decodes small integers and float32 to float32, as rioxarray
        kind = np.float32 if _decodes_to_float32(np.dtype(page.dtype)) else np.float64
        attrs["scale_factor"], attrs["add_offset"] = kind(scales[0]), kind(offsets[0])
    else:  # differing per band: not decoded (as rioxarray)
        attrs["scales"], attrs["offsets"] = tuple(scales), tuple(offsets)
    descriptions = per_band.get("description", {})
    if descriptions:
        names = tuple(descriptions.get(b, "") for b in range(bands))
        attrs["long_name"] = names if bands > 1 else names[0]
    units = per_band.get("unittype", {})
    if units and len(set(units.values())) == 1:
        attrs["units"] = next(iter(units.values()))
    return attrs


def _crs(path: str, geokeys: dict[str, Any]) -> dict[str, Any] | None:
    """``spatial_ref`` attributes for the file's CRS, or None (with a warning) if there is
    one pyproj cannot read from its EPSG code and GDAL (rasterio) is not installed."""
    if not any(str(k).endswith("GeoKey") for k in geokeys):
        return None
    code = epsg_code(geokeys)
    if code is not None:
        try:
            return dict(crs_attrs(code))
        except Exception:  # unknown code: let GDAL interpret the keys
            pass
    try:
        import rasterio
    except ImportError:
        warnings.warn(
            f"{path!r} has a user-defined CRS (no EPSG code) that xrdist reads through GDAL; "
            "install rasterio to get it. Opened without a CRS.",
            NotGeoreferencedWarning,
            stacklevel=4,
        )
        return None
    from xrdist.locks import GDAL, library_lock

    with library_lock(GDAL), rasterio.open(path) as src:
        wkt = src.crs.to_wkt() if src.crs else None
    return dict(crs_attrs(wkt)) if wkt else None


def walk(
    handle: tifffile.TiffFile, path: str, identity: FileIdentity, group: str | None
) -> FileDescription:
    """Describe one image of a TIFF (under the file's lock: tifffile seeks)."""
    level = _level(group)
    with file_lock(path):
        images = _images(handle)
        if level >= len(images):
            raise ValueError(
                f"{path!r} has {len(images) - 1} overview(s); overview_level="
                f"{level - 1} does not exist"
            )
        page, full = images[level], images[0]
        index = _build_tiles(page, path)
        try:  # tifffile parses the GeoKeys now; xrdist interprets them below
            geokeys = dict(full.geotiff_tags or {})
            affine = affine_from_tags(geokeys)
            attrs = _band_attrs(full, index.shape[0], geokeys)
        except (tifffile.TiffFileError, *PARSE_ERRORS) as err:
            raise _unreadable(path, err) from err
    with _tiles_lock:
        _tiles.setdefault(handle, {})[level] = index
    bands, height, width = index.shape
    if affine is None:
        warnings.warn(
            f"{path!r} has no georeferencing: opened with pixel-index coordinates "
            "(x, y = column, row + 0.5)",
            NotGeoreferencedWarning,
            stacklevel=4,
        )
        affine = IDENTITY
    elif level:
        affine = affine.scaled(full.imagewidth / width, full.imagelength / height)
    if affine.rotated:
        raise ValueError(
            f"{path!r} has a rotated or sheared transform ({affine}); xrdist reads "
            "north-up rasters only. Warp it first (e.g. gdalwarp)."
        )
    x, y = pixel_centres(affine, width, height)
    try:
        crs = _crs(path, geokeys)
    except PARSE_ERRORS as err:
        if path in str(err):
            raise
        raise _unreadable(path, err) from err
    variables: dict[str, VariableDescription] = {
        "band": VariableDescription(
            "band",
            ("band",),
            (bands,),
            np.dtype("int64"),
            values=np.arange(1, bands + 1, dtype=np.int64),
        ),
        "x": VariableDescription("x", ("x",), (width,), x.dtype, values=x),
        "y": VariableDescription("y", ("y",), (height,), y.dtype, values=y),
    }
    if crs is not None:
        spatial = {**crs, "GeoTransform": affine.gdal()}
        variables["spatial_ref"] = VariableDescription(
            "spatial_ref", (), (), np.dtype("int64"), spatial, values=np.array(0)
        )
        attrs["grid_mapping"] = "spatial_ref"
        attrs["coordinates"] = "spatial_ref"
    disk = (1 if index.planar or bands == 1 else bands, *index.tile)
    encoding = {
        "chunksizes": disk,
        "preferred_chunks": dict(zip(("band", "y", "x"), disk, strict=True)),
        "compression": None if index.compression == "none" else index.compression,
        "tiled": bool(page.is_tiled),
        "overviews": len(images) - 1,
        "source": path,
        "original_shape": index.shape,
    }
    variables[VARIABLE] = VariableDescription(
        VARIABLE, ("band", "y", "x"), index.shape, index.dtype, attrs, encoding
    )
    return FileDescription(
        path=path,
        identity=identity,
        library=LIBRARY,
        group=group,
        file_format="GeoTIFF" if geokeys else "TIFF",
        dims={"band": bands, "y": height, "x": width},
        unlimited_dims=frozenset(),
        attrs={},
        variables=variables,
    )
