"""Georeferencing of GeoTIFF images: affine transform, pixel-centre coordinates, CRS.

Pure functions over the GeoTIFF tags (as :mod:`tifffile` parses them): the affine
transform from ``ModelTransformation`` or ``ModelPixelScale`` + ``ModelTiepoint`` (with
GDAL's half-pixel shift for ``PixelIsPoint`` rasters), the 1-D ``x``/``y`` coordinates of
pixel centres, and the CRS from the EPSG code in the GeoKey directory, turned into the
attributes rioxarray writes on its ``spatial_ref`` coordinate (CF grid-mapping attributes
from :mod:`pyproj`, ``crs_wkt``/``spatial_ref`` in GDAL's WKT1 and ``GeoTransform``), so
that the ``.rio`` accessor and CF tools understand the result.

Notes
-----
Thread-safe; CRS attributes are computed once per CRS per process (:func:`crs_attrs`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

#: GeoKey value meaning "user-defined": the CRS is spelled out by parameters, not a code.
USER_DEFINED = 32767
MODEL_PROJECTED, MODEL_GEOGRAPHIC = 1, 2
RASTER_PIXEL_IS_POINT = 2


@dataclass(frozen=True)
class Affine:
    """``x = a*col + b*row + c``, ``y = d*col + e*row + f`` (pixel corner coordinates)."""

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float

    @property
    def rotated(self) -> bool:
        return self.b != 0 or self.d != 0

    def scaled(self, sx: float, sy: float) -> Affine:
        """The transform of the same extent with pixels ``sx`` by ``sy`` times larger."""
        return Affine(self.a * sx, self.b * sy, self.c, self.d * sx, self.e * sy, self.f)

    def gdal(self) -> str:
        """GDAL's GeoTransform (c a b f d e) as rioxarray writes it."""
        return " ".join(str(float(v)) for v in (self.c, self.a, self.b, self.f, self.d, self.e))


#: The transform GDAL gives an image without georeferencing: pixel indices.
IDENTITY = Affine(1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def is_point(geokeys: dict[str, Any]) -> bool:
    """True when the raster's values are at points (``PixelIsPoint``), not areas."""
    return int(geokeys.get("GTRasterTypeGeoKey", 1)) == RASTER_PIXEL_IS_POINT


def affine_from_tags(geokeys: dict[str, Any]) -> Affine | None:
    """The pixel-corner affine transform of a GeoTIFF, or None without one.

    As GDAL does, a ``PixelIsPoint`` raster's tie point is the *centre* of its pixel, so
    the corner transform is shifted by half a pixel.
    """
    matrix = geokeys.get("ModelTransformation")
    if matrix is not None:
        m = np.asarray(matrix, dtype=float).ravel()
        affine = Affine(m[0], m[1], m[3], m[4], m[5], m[7])
    else:
        scale, tiepoint = geokeys.get("ModelPixelScale"), geokeys.get("ModelTiepoint")
        if scale is None or tiepoint is None:
            return None
        sx, sy = float(scale[0]), float(scale[1])
        i, j, x, y = (float(tiepoint[k]) for k in (0, 1, 3, 4))
        affine = Affine(sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    if is_point(geokeys):
        a, b, d, e = affine.a, affine.b, affine.d, affine.e
        affine = Affine(a, b, affine.c - 0.5 * (a + b), d, e, affine.f - 0.5 * (d + e))
    return affine


def pixel_centres(affine: Affine, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` of pixel centres (float64) of a transform without rotation."""
    x = affine.c + (np.arange(width) + 0.5) * affine.a
    y = affine.f + (np.arange(height) + 0.5) * affine.e
    return x, y


def epsg_code(geokeys: dict[str, Any]) -> int | None:
    """The EPSG code of the raster's CRS, or None when it is user-defined or absent."""
    model = int(geokeys.get("GTModelTypeGeoKey", 0))
    names = {
        MODEL_PROJECTED: ("ProjectedCSTypeGeoKey", "ProjectedCRSGeoKey"),
        MODEL_GEOGRAPHIC: ("GeographicTypeGeoKey", "GeodeticCRSGeoKey"),
    }.get(model, ())
    for name in names:
        if name in geokeys:
            code = int(geokeys[name])
            return None if code in (0, USER_DEFINED) else code
    return None


@functools.lru_cache(maxsize=256)
def crs_attrs(crs: int | str) -> dict[str, Any]:
    """The attributes of a ``spatial_ref`` coordinate for an EPSG code or WKT, as
    rioxarray writes them: CF grid-mapping attributes, ``crs_wkt`` and ``spatial_ref``.
    Raises ``pyproj.exceptions.CRSError`` for a CRS pyproj does not know."""
    import pyproj

    # GDAL's WKT1, as rioxarray sees a GeoTIFF's CRS, axes included: without them a CRS
    # whose EPSG axes are northing first (EPSG:3035, 31467) no longer maps to its code
    if isinstance(crs, int):
        code = pyproj.CRS.from_epsg(crs)
        crs = code.to_wkt("WKT1_GDAL", output_axis_rule=True) or code.to_wkt()
    parsed = pyproj.CRS.from_wkt(crs)
    attrs = parsed.to_cf()
    wkt = parsed.to_wkt("WKT1_GDAL", output_axis_rule=True) or crs
    attrs["crs_wkt"] = wkt
    attrs["spatial_ref"] = wkt
    return attrs


def crs_name(attrs: dict[str, Any]) -> str:
    """A short name of the CRS held by ``spatial_ref`` attributes, for messages."""
    import pyproj

    wkt = attrs.get("crs_wkt")
    if not wkt:
        return "no CRS"
    crs = pyproj.CRS.from_wkt(wkt)
    code = crs.to_epsg()
    return f"EPSG:{code}" if code else crs.name
