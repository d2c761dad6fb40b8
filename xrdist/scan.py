"""Describe many files at once and check that they stack.

:func:`scan` describes every file (in threads, or on the workers of the active
``distributed`` client, through the description cache of :mod:`xrdist.description`),
decides the concatenation dimension and order, and validates that the files stack: the
same variables with the same dimensions, dtypes, shapes along the other dimensions, the
same attributes that decoding depends on, and the same small coordinate values. Each file
is reduced to a hashable signature once; only a file whose signature differs from the
first is examined in detail, for an error that names it and says what differs.

Notes
-----
Thread-safe. A :class:`Stack` is immutable and picklable.
"""

from __future__ import annotations

import contextvars
import functools
import glob
import hashlib
import itertools
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from xrdist import persist
from xrdist.describing import AUTO, check_library, describe_file, local_path
from xrdist.description import FileDescription, VariableDescription
from xrdist.labels import TimesSpec, file_times, has_time_tags

#: The library that reads TIFF scenes (files without a time dimension of their own).
TIFF_LIBRARY = "tifffile"

#: Attributes whose values change how the stored numbers decode: they must agree across
#: the files of a stacked variable, or the result would be silently wrong.
DECODING_ATTRS = (
    "scale_factor",
    "add_offset",
    "_FillValue",
    "missing_value",
    "_Unsigned",
    "units",
    "calendar",
    "dtype",
    "valid_min",
    "valid_max",
    "valid_range",
    "flag_values",
)

#: Attributes of a grid-mapping variable (``spatial_ref``) that say where the pixels are:
#: scenes with a different CRS or transform do not stack (reprojecting is out of scope).
GRID_ATTRS = ("crs_wkt", "GeoTransform")
STACKING_ATTRS = DECODING_ATTRS + GRID_ATTRS


class StackError(ValueError):
    """The files do not stack; the message names the first file that differs and how."""


class StackWarning(UserWarning):
    """The files stack, but the result is probably not what was meant (values repeated
    along the stacking dimension); the message names the files."""


def coordinate_names(description: FileDescription) -> set[str]:
    """Names xarray treats as coordinates: dimension coordinates, those listed in
    ``coordinates`` attributes, and the ``bounds`` of those."""
    names = set(str(description.attrs.get("coordinates", "")).split())
    for name, var in description.variables.items():
        if var.dims == (name,):
            names.add(name)
        names.update(str(var.attrs.get("coordinates", "")).split())
    names.update(
        str(description.variables[n].attrs["bounds"])
        for n in list(names)
        if n in description.variables and "bounds" in description.variables[n].attrs
    )
    return names


def decoded_per_file(description: FileDescription, concat_dim: str) -> frozenset[str]:
    """Small coordinates along the stack (times, their bounds): decoded in each file, since
    their units may differ from file to file ("days since <file date>")."""
    coords = coordinate_names(description)
    return frozenset(
        name
        for name, v in description.variables.items()
        if concat_dim in v.dims and v.values is not None and name in coords
    )


@dataclass(frozen=True)
class Stack:
    """Described files in stacking order, and the dimension they follow each other along."""

    descriptions: tuple[FileDescription, ...]
    concat_dim: str
    library: str
    group: str | None
    #: per file, its small coordinates along the stack, decoded (see decoded_per_file)
    decoded: tuple[dict[str, Any], ...] = ()
    #: when the files lack ``concat_dim``: each file's label along it (its time), or None
    labels: np.ndarray | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(d.path for d in self.descriptions)

    @property
    def first(self) -> FileDescription:
        return self.descriptions[0]

    @property
    def per_file(self) -> frozenset[str]:
        """Variables decoded file by file (see :func:`decoded_per_file`)."""
        return decoded_per_file(self.first, self.concat_dim)

    @property
    def file_lengths(self) -> tuple[int, ...]:
        """Each file's length along the concatenation dimension (1 if it lacks it)."""
        return tuple(d.dims.get(self.concat_dim, 1) for d in self.descriptions)

    @property
    def starts(self) -> tuple[int, ...]:
        """Each file's first position along the concatenation dimension, and the total."""
        return tuple(np.concatenate([[0], np.cumsum(self.file_lengths)]).tolist())


def expand_paths(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[str]:
    """A glob pattern (sorted matches), one path, or a sequence of paths -> paths."""
    if isinstance(paths, str | os.PathLike):
        text = local_path(paths)
        if glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise FileNotFoundError(f"no files match the pattern {text!r}")
            return found
        if os.path.isdir(text):
            raise IsADirectoryError(
                f"{text!r} is a folder: pass a glob pattern of its files, such as "
                f"{os.path.join(text, '*.nc')!r}, or a list of paths"
            )
        return [text]
    found = [local_path(p) for p in paths]
    if not found:
        raise ValueError("no files given: pass a glob pattern or a non-empty list of paths")
    return found


def _active_client() -> Any:
    if "distributed" not in sys.modules:  # never imported: no client can be active
        return None
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def describe_all(
    paths: Sequence[str], library: str, group: str | None, parallel: bool = True
) -> list[FileDescription]:
    """Descriptions of ``paths``, in order: on the active distributed client's workers if
    there is one, else in a thread pool (``parallel``), else one after another."""
    from xrdist.description import cached
    from xrdist.locks import canonical_path

    canonical = [canonical_path(p) for p in paths]
    found = [cached(p, library, group) for p in canonical]  # memory or disk: no walk
    missing = [p for p, d in zip(canonical, found, strict=True) if d is None]
    if not missing:
        return found
    walked = iter(_describe_missing(missing, library, group, parallel))
    return [d if d is not None else next(walked) for d in found]


def _describe_missing(
    canonical: Sequence[str], library: str, group: str | None, parallel: bool
) -> list[FileDescription]:
    client = _active_client() if parallel else None
    if client is not None:
        futures = client.map(describe_file, canonical, library=library, group=group)
        return list(client.gather(futures))
    with persist.batch():  # every description stored in one transaction
        if parallel and len(canonical) > 1:
            context = contextvars.copy_context()  # the threads store into the batch

            def describe_one(path: str) -> FileDescription:
                return context.copy().run(describe_file, path, library, group)

            with ThreadPoolExecutor(min(16, len(canonical))) as pool:
                return list(pool.map(describe_one, canonical))
        return [describe_file(p, library, group) for p in canonical]


def _digest(values: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(values).view(np.uint8).tobytes()).hexdigest()


def _attr_key(value: Any) -> Any:
    array = np.asarray(value)
    if array.dtype.kind == "O":
        return str(value)
    return (array.dtype.str, array.shape, array.tobytes())


def variable_signature(
    var: VariableDescription, concat_dim: str, per_file: bool = False, by_value: bool = True
) -> tuple[Any, ...]:
    """What must agree across files for ``var`` to stack: everything but the length along
    the concatenation dimension, the values of variables along it (and of those
    without it that are stacked anyway, unless ``by_value``), and the decoding attributes
    of variables decoded file by file."""
    along = concat_dim in var.dims
    shape = tuple(n for d, n in zip(var.dims, var.shape, strict=True) if d != concat_dim)
    attrs = (
        ()
        if per_file
        else tuple((k, _attr_key(var.attrs[k])) for k in STACKING_ATTRS if k in var.attrs)
    )
    values = None if along or var.values is None or not by_value else _digest(var.values)
    dtype = None if per_file else var.dtype.str  # decoded file by file: compared decoded
    return (var.name, var.dims, dtype, shape, attrs, values)


def compared_by_value(description: FileDescription, data_vars: str) -> frozenset[str]:
    """Variables without the stacked dimension whose values must agree across files:
    coordinates always; data variables too unless they are stacked (``"all"``)."""
    coords = coordinate_names(description)
    return frozenset(name for name in description.variables if data_vars != "all" or name in coords)


def file_signature(
    description: FileDescription,
    concat_dim: str,
    per_file: frozenset[str] = frozenset(),
    by_value: frozenset[str] | None = None,
) -> tuple[Any, ...]:
    variables = tuple(
        variable_signature(v, concat_dim, name in per_file, by_value is None or name in by_value)
        for name, v in sorted(description.variables.items())
    )
    dims = tuple(sorted((d, n) for d, n in description.dims.items() if d != concat_dim))
    return (dims, variables)


def _crs_name(attrs: dict[str, Any]) -> str:
    """A short name of a grid mapping's CRS, or the start of its WKT if pyproj cannot read it."""
    from xrdist.georef import crs_name

    try:
        return crs_name(attrs)
    except Exception:
        return repr(str(attrs.get("crs_wkt"))[:80] + "...")


def _grid_difference(
    first: FileDescription, other: FileDescription, sizes: bool = True
) -> str | None:
    """Words for a different CRS, transform or (``sizes``) size of two scenes, or None."""
    for name, a in first.variables.items():
        b = other.variables.get(name)
        if b is None or not any(k in a.attrs for k in GRID_ATTRS):
            continue
        if a.attrs.get("crs_wkt") != b.attrs.get("crs_wkt"):
            return (
                f"its CRS is {_crs_name(b.attrs)}, not {_crs_name(a.attrs)}. xrdist does not "
                "reproject: warp the scenes to one grid first (e.g. with gdalwarp)"
            )
        if a.attrs.get("GeoTransform") != b.attrs.get("GeoTransform"):
            return (
                f"its transform (GDAL GeoTransform) is {b.attrs.get('GeoTransform')!r}, not "
                f"{a.attrs.get('GeoTransform')!r}: the scenes are not on one grid. xrdist "
                "does not resample: warp them to one grid first (e.g. with gdalwarp)"
            )
    for dim in ("y", "x") if sizes else ():
        if first.dims.get(dim) != other.dims.get(dim):
            return (
                f"its size is {other.dims.get('y')} x {other.dims.get('x')} pixels, not "
                f"{first.dims.get('y')} x {first.dims.get('x')}"
            )
    return None


def _difference(first: FileDescription, other: FileDescription, concat_dim: str) -> str:
    """Words for the first thing that differs between two files' signatures, and their
    formats if they differ (a netCDF-3 file among netCDF-4 ones has other dtypes)."""
    found = _first_difference(first, other, concat_dim)
    if first.file_format != other.file_format:
        found += f" (it is a {other.file_format} file, the first a {first.file_format} file)"
    return found


def _first_difference(first: FileDescription, other: FileDescription, concat_dim: str) -> str:
    # netCDF files are compared by CRS and transform only: their sizes are named by variable
    grid = _grid_difference(first, other, sizes=first.library == TIFF_LIBRARY)
    if grid is not None:
        return grid
    missing = sorted(set(first.variables) - set(other.variables))
    extra = sorted(set(other.variables) - set(first.variables))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"it lacks variables {missing}")
        if extra:
            parts.append(f"it has extra variables {extra}")
        return " and ".join(parts)
    for name in sorted(first.variables):
        a, b = first.variables[name], other.variables[name]
        if a.dims != b.dims:
            return f"variable {name!r} has dimensions {b.dims}, not {a.dims}"
        per_file = name in decoded_per_file(first, concat_dim)
        if a.dtype != b.dtype and not per_file:
            return f"variable {name!r} has dtype {b.dtype}, not {a.dtype}"
        sa = variable_signature(a, concat_dim, per_file)
        sb = variable_signature(b, concat_dim, per_file)
        if sa[3] != sb[3]:
            return (
                f"variable {name!r} has shape {b.shape}, not {a.shape} (apart from {concat_dim!r})"
            )
        if sa[4] != sb[4]:
            keys = [
                k for k in STACKING_ATTRS if _attr_key(a.attrs.get(k)) != _attr_key(b.attrs.get(k))
            ]
            shown = ", ".join(
                f"{k}={b.attrs.get(k)!r} (first file: {a.attrs.get(k)!r})" for k in keys
            )
            return f"variable {name!r} decodes differently: {shown}"
        if sa[5] != sb[5]:
            new = (
                f" (the files have no dimension {concat_dim!r}, so they are stacked along a "
                f"new one and must agree in everything else: check concat_dim=)"
                if concat_dim not in first.dims
                else ""
            )
            return (
                f"variable {name!r} (which does not have {concat_dim!r}) has different "
                "values; differing coordinates are not aligned (and with "
                f"data_vars='minimal' data variables must agree too){new}"
            )
    for dim in sorted(set(first.dims) | set(other.dims)):
        if dim != concat_dim and first.dims.get(dim) != other.dims.get(dim):
            return f"dimension {dim!r} has length {other.dims.get(dim)}, not {first.dims.get(dim)}"
    return "its layout differs"  # pragma: no cover - signatures differ somewhere above


def validate(
    descriptions: Sequence[FileDescription], concat_dim: str, data_vars: str = "all"
) -> None:
    """Raise :class:`StackError` naming the first file that does not stack with the first."""
    first = descriptions[0]
    if not first.variables:
        raise StackError(f"{first.path!r} has no variables to stack")
    per_file = decoded_per_file(first, concat_dim)
    by_value = compared_by_value(first, data_vars)
    expected = file_signature(first, concat_dim, per_file, by_value)
    for other in descriptions[1:]:
        if file_signature(other, concat_dim, per_file, by_value) != expected:
            raise StackError(
                f"{other.path!r} does not stack with {first.path!r} along {concat_dim!r}: "
                f"{_difference(first, other, concat_dim)}"
            )


def _dimension_coordinates(description: FileDescription) -> dict[str, VariableDescription]:
    return {
        d: v for d, v in description.variables.items() if v.dims == (d,) and v.values is not None
    }


def infer_concat_dim(descriptions: Sequence[FileDescription]) -> str:
    """For ``combine="by_coords"``: the one dimension whose coordinate values differ."""

    def key(var: VariableDescription) -> tuple[Any, ...]:
        # raw values *and* what they mean: "days since <file date>" is common
        units = tuple(_attr_key(var.attrs.get(k)) for k in ("units", "calendar"))
        return (_digest(var.values), var.values.shape, units)

    first = {d: key(v) for d, v in _dimension_coordinates(descriptions[0]).items()}
    differing: dict[str, list[str]] = {}  # dimension -> the files whose values differ
    for other in descriptions[1:]:
        theirs = _dimension_coordinates(other)
        for dim, mine in first.items():
            if dim not in theirs or key(theirs[dim]) != mine:
                differing.setdefault(dim, []).append(other.path)
    if len(differing) == 1:
        return next(iter(differing))
    # One dimension differs in every file, others in some: the stack follows the first,
    # and validation names the files that differ in the others.
    everywhere = [d for d, paths in differing.items() if len(paths) == len(descriptions) - 1]
    if len(everywhere) == 1 and len(descriptions) > 2:
        return everywhere[0]
    if not differing:
        what = "no dimension coordinate differs between files"
    else:
        named = "; ".join(
            f"{d!r} in {paths[0]!r}" + (f" and {len(paths) - 1} other(s)" if len(paths) > 1 else "")
            for d, paths in sorted(differing.items())
        )
        what = (
            f"{sorted(differing)} all differ between files (from {descriptions[0].path!r}: {named})"
        )
    raise StackError(
        f"cannot infer the dimension to concatenate {len(descriptions)} files along: "
        f"{what}. Pass concat_dim= (with combine='nested' to keep the order given)."
    )


#: Seconds per CF time unit, for rebasing integer times to another reference date.
_UNIT_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
_STANDARD_CALENDARS = (None, "standard", "gregorian", "proleptic_gregorian")


@functools.lru_cache(maxsize=4096)
def _parse_time_units(units: str) -> tuple[str, Any] | None:
    """("days", Timestamp) for "days since 2020-01-01", else None."""
    import pandas as pd

    unit, _, ref = units.partition(" since ")
    unit = unit.strip().lower()
    if unit not in _UNIT_SECONDS or not ref:
        return None
    try:
        stamp = pd.Timestamp(ref.strip())
    except (ValueError, TypeError):
        return None
    return None if stamp.tzinfo is not None else (unit, stamp)


def _time_offset(var: VariableDescription, base: Any) -> int | None:
    """Whole number k such that ``var``'s integer times equal values + k in units
    ``base``, or None (not integer times, another unit or calendar, fractional shift)."""
    units = var.attrs.get("units")
    if not isinstance(units, str) or not isinstance(base, str) or var.dtype.kind not in "iu":
        return None
    if var.attrs.get("calendar") not in _STANDARD_CALENDARS or "_FillValue" in var.attrs:
        return None
    mine, theirs = _parse_time_units(units), _parse_time_units(base)
    if mine is None or theirs is None or mine[0] != theirs[0]:
        return None
    shift = (mine[1] - theirs[1]).total_seconds() / _UNIT_SECONDS[mine[0]]
    return int(shift) if float(shift).is_integer() else None


def decode_file_coordinates(
    descriptions: Sequence[FileDescription],
    names: Iterable[str],
    decode: Mapping[str, Any],
    concat_dim: str,
) -> list[dict[str, Any]]:
    """The named small variables of each file, decoded with xarray's CF decoders.

    Files whose variables have the same attributes (the same ``units``, ``calendar``...)
    are decoded together: their values are concatenated along ``concat_dim``, decoded in
    one call and split again, which for a thousand files is a hundred times faster than
    decoding file by file and gives the same values.
    """
    from xarray import Variable, conventions

    names = sorted(names)
    if not names:
        return [{} for _ in descriptions]
    options = {k: v for k, v in decode.items() if k != "drop_variables"}
    options["decode_coords"] = False
    # Integer times "<unit> since <date>" whose dates differ by whole units are rebased
    # to the first file's units (exactly), so that per-date files decode together.
    base_units = {n: descriptions[0].variables[n].attrs.get("units") for n in names}
    rebased: list[dict[str, np.ndarray]] = []
    groups: dict[Any, list[int]] = {}
    for i, d in enumerate(descriptions):
        shifted = {}
        for n in names:
            var = d.variables[n]
            offset = _time_offset(var, base_units[n])
            bounds = d.variables.get(str(var.attrs.get("bounds", "")))
            inherits = bounds is not None and "units" not in bounds.attrs  # CF bounds
            if offset is None or (
                inherits and (bounds.name not in names or bounds.dtype.kind not in "iu")
            ):
                continue
            shifted[n] = var.values.astype(np.int64) + offset
            if inherits:
                shifted[bounds.name] = bounds.values.astype(np.int64) + offset
        rebased.append(shifted)
        key = tuple(
            (
                n,
                n in shifted,
                tuple(
                    sorted(
                        (k, _attr_key(v))
                        for k, v in d.variables[n].attrs.items()
                        if not (n in shifted and k == "units")
                    )
                ),
            )
            for n in names
        )
        groups.setdefault(key, []).append(i)
    out: list[dict[str, Any]] = [{} for _ in descriptions]
    for members in groups.values():
        first = descriptions[members[0]]
        raw = {}
        for name in names:
            var = first.variables[name]
            axis = var.dims.index(concat_dim)
            values = np.concatenate(
                [rebased[i].get(name, descriptions[i].variables[name].values) for i in members],
                axis=axis,
            )
            attrs = dict(var.attrs)
            if name in rebased[members[0]] and "units" in attrs:
                attrs["units"] = base_units[name]
            raw[name] = Variable(var.dims, values, attrs, dict(var.encoding))
        try:
            decoded, _, _ = conventions.decode_cf_variables(raw, {}, **options)
        except Exception as err:  # xarray's message does not say which files
            others = f" (and {len(members) - 1} other files)" if len(members) > 1 else ""
            err.add_note(f"while decoding {names} of {first.path!r}{others}")
            raise
        for name in names:
            var = decoded[name]
            axis = var.dims.index(concat_dim)
            lengths = [descriptions[i].variables[name].shape[axis] for i in members]
            parts = np.split(np.asarray(var.values), np.cumsum(lengths)[:-1], axis=axis)
            for i, part in zip(members, parts, strict=True):  # already decoded: fastpath
                out[i][name] = Variable(var.dims, part, var.attrs, var.encoding, fastpath=True)
    return out


def scan(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    library: str,
    group: str | None = None,
    concat_dim: str | None = None,
    combine: str = "by_coords",
    parallel: bool = True,
    decode: Mapping[str, Any] | None = None,
    data_vars: str = "all",
    times: TimesSpec | None = None,
) -> Stack:
    """Describe ``paths`` and check that they stack; see the module docstring.

    ``decode`` holds the CF decoding options (as for ``xr.open_dataset``) used for the
    coordinates decoded file by file, which also order the files for ``by_coords``.
    Files that lack ``concat_dim`` (single scenes) stack along a new dimension labelled
    by ``times`` (see :func:`xrdist.labels.file_times`); TIFF scenes default to
    ``concat_dim="time"`` labelled by their DateTime tags when every file has one.
    """
    if combine not in ("by_coords", "nested"):
        raise ValueError(f"combine must be 'by_coords' or 'nested', not {combine!r}")
    check_library(library)
    decode = dict(decode or {})
    files = expand_paths(paths)
    descriptions = describe_all(files, library, group, parallel)
    if library == AUTO and {d.library for d in descriptions} == {"h5py", "netcdf4"}:
        # netCDF-3 files among netCDF-4 ones: netCDF-C reads them all (a stack is read
        # by one library), as xarray's engine does
        descriptions = describe_all(files, "netcdf4", group, parallel)
    scenes = descriptions[0].library == TIFF_LIBRARY
    if concat_dim is None and (times is not None or scenes):
        concat_dim = "time"
    if concat_dim is not None and concat_dim not in descriptions[0].dims:
        return _scene_stack(descriptions, concat_dim, combine, data_vars, times, group)
    if times is not None:
        first = descriptions[0]
        raise ValueError(
            f"times= labels files that have no {concat_dim!r} dimension, but {first.path!r} "
            f"has one (length {first.dims[concat_dim]}): its {concat_dim!r} coordinate "
            f"gives the times. Drop times=, or pass concat_dim= the name of a new dimension"
        )
    if combine == "nested":
        if concat_dim is None:
            raise ValueError("combine='nested' needs concat_dim= (for example 'time')")
    elif concat_dim is None:
        concat_dim = (
            infer_concat_dim(descriptions) if len(descriptions) > 1 else _only_dim(descriptions[0])
        )
    _check_libraries(descriptions)  # first: files read differently also differ in detail
    validate(descriptions, concat_dim, data_vars)
    per_file = decoded_per_file(descriptions[0], concat_dim)
    decoded = decode_file_coordinates(descriptions, per_file, decode, concat_dim)
    _check_decoded_dtypes(descriptions, decoded, concat_dim)
    if combine == "by_coords":
        order = _order_by_coordinate(descriptions, decoded, concat_dim)
        descriptions = [descriptions[i] for i in order]
        decoded = [decoded[i] for i in order]
    if concat_dim in per_file:
        _warn_duplicates(
            [d.path for d in descriptions], [c[concat_dim].values for c in decoded], concat_dim
        )
    resolved = descriptions[0].library
    return Stack(tuple(descriptions), concat_dim, resolved, group, tuple(decoded))


def _scene_stack(
    descriptions: Sequence[FileDescription],
    concat_dim: str,
    combine: str,
    data_vars: str,
    times: TimesSpec | None,
    group: str | None,
) -> Stack:
    """Files without ``concat_dim`` (one scene each), stacked along it as a new dimension
    labelled by ``times``, in time order for ``combine="by_coords"``."""
    _check_libraries(descriptions)
    if times is None and descriptions[0].library == TIFF_LIBRARY and has_time_tags(descriptions):
        times = "tag"
    if combine == "by_coords" and times is None:
        first = descriptions[0]
        raise StackError(
            f"the files have no dimension {concat_dim!r} to order them by ({first.path!r} "
            f"has {list(first.dims)}): check concat_dim=, or, to stack them along a new "
            f"dimension {concat_dim!r}, pass times= (a file-name format such as '%Y%m%d', "
            "a regular expression, 'tag' or a list) or combine='nested' to keep the order "
            "given"
        )
    validate(descriptions, concat_dim, data_vars)
    labels = None if times is None else file_times(descriptions, times)
    if combine == "by_coords":
        assert labels is not None
        order = sorted(range(len(descriptions)), key=lambda i: labels[i])
        for a, b in itertools.pairwise(order):
            if labels[a] == labels[b]:
                raise StackError(
                    f"{descriptions[a].path!r} and {descriptions[b].path!r} have the same "
                    f"{concat_dim} {labels[a]!r}: duplicate scenes? (with bands in separate "
                    "files, pass bands=)"
                )
        descriptions = [descriptions[i] for i in order]
        labels = labels[order]
    elif labels is not None:
        _warn_duplicates([d.path for d in descriptions], list(labels), concat_dim)
    return Stack(tuple(descriptions), concat_dim, descriptions[0].library, group, (), labels)


def _check_decoded_dtypes(
    descriptions: Sequence[FileDescription], decoded: Sequence[dict[str, Any]], concat_dim: str
) -> None:
    """The small coordinates decoded file by file (whose stored dtypes may differ: int32
    times in a netCDF-3 file, int64 in a netCDF-4 one) must decode to one dtype."""
    for name, var in decoded[0].items():
        for description, other in zip(descriptions[1:], decoded[1:], strict=True):
            if other[name].dtype != var.dtype:
                raise StackError(
                    f"{description.path!r} does not stack with {descriptions[0].path!r} "
                    f"along {concat_dim!r}: variable {name!r} decodes to {other[name].dtype}, "
                    f"not {var.dtype}"
                )


def _check_libraries(descriptions: Sequence[FileDescription]) -> None:
    libraries = {d.library for d in descriptions}
    if TIFF_LIBRARY in libraries and len(libraries) > 1:
        tiff = next(d for d in descriptions if d.library == TIFF_LIBRARY)
        other = next(d for d in descriptions if d.library != TIFF_LIBRARY)
        raise StackError(
            f"the files mix TIFF ({tiff.path!r}) and netCDF ({other.path!r}): a stack holds "
            "files of one format; open each format's files separately (a glob such as "
            "'*.tif' or '*.nc' picks one)"
        )
    if len(libraries) > 1:
        odd = next(d for d in descriptions if d.library != descriptions[0].library)
        raise StackError(
            f"{odd.path!r} is read with {odd.library}, but {descriptions[0].path!r} with "
            f"{descriptions[0].library} (netCDF-3 and netCDF-4 files mixed?); pass "
            "library='netcdf4' to read them all with netCDF-C"
        )


def _warn_duplicates(paths: Sequence[str], values: Sequence[Any], dim: str) -> None:
    """Warn (:class:`StackWarning`), naming the files, if a value of ``dim`` occurs twice:
    in one file, or in two files (possible with ``combine="nested"``, which keeps the
    order given; ``"by_coords"`` raises for duplicates across files)."""
    arrays = [np.ravel(np.asarray(v)) for v in values]
    if not arrays:
        return
    flat = np.concatenate(arrays)
    owner = np.repeat(np.arange(len(arrays)), [a.size for a in arrays])
    try:
        order = np.argsort(flat, kind="stable")
        ordered = flat[order]
        repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    except TypeError:  # values that do not sort or compare: not checked
        return
    if not repeated.size:
        return
    first = repeated[0]
    a, b = int(owner[order[first]]), int(owner[order[first + 1]])
    where = (
        f"{paths[a]!r} holds it twice"
        if a == b
        else f"{paths[a]!r} and {paths[b]!r} both hold it"
        + (" (the same file, given twice)" if paths[a] == paths[b] else "")
    )
    count = len(np.unique(ordered[repeated]))
    warnings.warn(
        f"{dim} has {count} duplicate value(s), e.g. {ordered[first]!r}: {where}. Selecting "
        f"by {dim} returns every copy; check for files given twice or copied under another "
        "name",
        StackWarning,
        stacklevel=4,
    )


def _only_dim(description: FileDescription) -> str:
    coords = list(_dimension_coordinates(description))
    if len(coords) == 1:
        return coords[0]
    raise StackError(
        f"one file ({description.path!r}) and no concat_dim=: pass concat_dim= to say "
        "which dimension the stack follows"
    )


def _order_by_coordinate(
    descriptions: Sequence[FileDescription], decoded: Sequence[dict[str, Any]], dim: str
) -> list[int]:
    """File order by the first decoded value of their ``dim`` coordinate."""
    keys = []
    for d, coords in zip(descriptions, decoded, strict=True):
        var = coords.get(dim)
        if var is None or var.size == 0:
            raise StackError(
                f"{d.path!r} has no values for coordinate {dim!r} to order the files by; "
                "pass combine='nested' to keep the order given"
            )
        keys.append((var.values[0], var.values[-1]))
    order = sorted(range(len(descriptions)), key=lambda i: keys[i][0])
    for a, b in itertools.pairwise(order):
        if keys[b][0] <= keys[a][1]:
            raise StackError(
                f"{descriptions[a].path!r} ({dim} {keys[a][0]!r} to {keys[a][1]!r}) and "
                f"{descriptions[b].path!r} (from {keys[b][0]!r}) overlap: duplicate or "
                "overlapping files"
            )
    return order
