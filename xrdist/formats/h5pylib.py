"""netCDF-4 files through h5py (HDF5), described exactly as netCDF4-python describes them.

A netCDF-4 file is an HDF5 file with conventions: dimensions are HDF5 dimension scales,
variables point to theirs with ``DIMENSION_LIST`` references, and some attributes are
bookkeeping that netCDF hides. This module reads that layout with h5py and reports
dimensions, variables, attributes and encoding as netCDF4-python reports them, so that
xarray's decoders produce identical datasets.

What it does not describe raises :class:`UnsupportedLayout` (plain HDF5 files without
dimension scales, enum, compound and other user types, multi-dimensional coordinate
variables); ``library="auto"`` then falls back to netCDF-C.

Locks: h5py serialises every HDF5 call with its own global lock, so reads take no extra
lock; open, the metadata walk and close hold ``library_lock(HDF5)`` so that a walk of many
calls sees one consistent state.

Notes
-----
Functions here are thread-safe. Handles are shared through the handle manager; use
:func:`proxy` for the picklable way to reach one.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import h5py
import numpy as np
from xarray.coding.strings import create_vlen_dtype

from xrdist.byterange import ChunkIndex, ContiguousIndex, build_chunk_index, unsupported_reason
from xrdist.description import SMALL_VARIABLE_BYTES, FileDescription, VariableDescription
from xrdist.identity import FileIdentity
from xrdist.locks import HDF5, library_lock
from xrdist.options import get_option
from xrdist.proxy import HandleProxy
from xrdist.window import BoxReader, bounding_box, failing_chunk, pick

LIBRARY = "h5py"
LOCK = library_lock(HDF5)

#: Attributes netCDF keeps for itself and never shows.
HIDDEN_ATTRS = frozenset(
    {
        "CLASS",
        "NAME",
        "REFERENCE_LIST",
        "DIMENSION_LIST",
        "_Netcdf4Dimid",
        "_Netcdf4Coordinates",
        "_nc3_strict",
        "_NCProperties",
        "_SuperblockVersion",
        "_IsNetcdf4",
    }
)
PURE_DIMENSION = b"This is a netCDF dimension but not a netCDF variable"
#: HDF5 filter ids of the plugin compressors netCDF-C names.
PLUGIN_FILTERS = {"zstd": 32015, "bzip2": 307, "blosc": 32001}


class UnsupportedLayout(Exception):
    """This file uses something the h5py path does not describe; use netCDF-C."""


def proxy(path: str) -> HandleProxy:
    """The picklable handle proxy of ``path`` for this library."""
    return HandleProxy.create(h5py.File, path, mode="r", lock=LOCK)


def _node(handle: h5py.File, group: str | None) -> h5py.Group:
    if group in (None, "", "/"):
        return handle
    try:
        node = handle[group.strip("/")]
    except KeyError:
        parent = handle
        for name in group.strip("/").split("/"):
            if name not in parent:
                break
            parent = parent[name]
        subgroups = sorted(k for k, v in parent.items() if isinstance(v, h5py.Group))
        raise OSError(
            f"group {group!r} not found in {handle.filename!r}; groups at this level: {subgroups}"
        ) from None
    if not isinstance(node, h5py.Group):
        raise OSError(f"{group!r} in {handle.filename!r} is a variable, not a group")
    return node


#: netCDF-4 stores a variable named like a dimension it is not the coordinate of under
#: this prefix (netCDF-C hides it; descriptions made by netCDF-C use the plain name).
NON_COORD_PREFIX = "_nc4_non_coord_"


def dataset(handle: h5py.File, group: str | None, name: str) -> h5py.Dataset:
    """The HDF5 dataset of netCDF variable ``name`` (caller holds LOCK or reads through
    h5py, which locks)."""
    node = _node(handle, group)
    found = node.get(NON_COORD_PREFIX + name)  # then "name" is only a dimension's scale
    if found is None:
        found = node.get(name)
    if not isinstance(found, h5py.Dataset):
        raise KeyError(f"{handle.filename!r} has no variable {name!r}")
    return found


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def attribute_value(value: Any) -> Any:
    """An attribute as netCDF4-python returns it: text as ``str``, several strings as a
    list, one number as a numpy scalar, several as an array."""
    if isinstance(value, bytes | str):
        return _text(value)
    if isinstance(value, h5py.Empty):
        raise UnsupportedLayout("empty attribute")
    array = np.asarray(value)
    if array.dtype.kind in "OSU":
        texts = [_text(v) for v in array.ravel()]
        return texts[0] if len(texts) == 1 else texts
    if array.dtype.fields is not None or array.dtype.kind not in "biuf":
        raise UnsupportedLayout(f"attribute of type {array.dtype}")
    return array.reshape(-1)[0] if array.size == 1 else array.reshape(-1)


def _attributes(obj: h5py.HLObject) -> dict[str, Any]:
    return {
        name: attribute_value(obj.attrs[name]) for name in obj.attrs if name not in HIDDEN_ATTRS
    }


def _is_dimension_scale(dset: h5py.Dataset) -> bool:
    cls = dset.attrs.get("CLASS")
    return cls is not None and _text(cls) == "DIMENSION_SCALE"


def _dimensions(node: h5py.Group) -> tuple[dict[str, int], set[str], set[str]]:
    """(sizes, unlimited names, names that are dimensions only) of a group's scales."""
    sizes, unlimited, pure = {}, set(), set()
    for name, obj in node.items():
        if isinstance(obj, h5py.Dataset) and _is_dimension_scale(obj):
            if obj.ndim != 1:
                raise UnsupportedLayout(f"multi-dimensional dimension scale {name!r}")
            sizes[name] = obj.shape[0]
            if obj.maxshape[0] is None:
                unlimited.add(name)
            label = obj.attrs.get("NAME")
            if isinstance(label, bytes) and label.startswith(PURE_DIMENSION):
                pure.add(name)
    return sizes, unlimited, pure


def _variable_dims(handle: h5py.File, name: str, dset: h5py.Dataset) -> tuple[str, ...]:
    if dset.ndim == 0:
        return ()
    if _is_dimension_scale(dset):
        return (name,)
    refs = dset.attrs.get("DIMENSION_LIST")
    if refs is None or len(refs) != dset.ndim:
        raise UnsupportedLayout(f"variable {name!r} has no netCDF dimensions")
    bare = [axis for axis, axis_refs in enumerate(refs) if len(axis_refs) == 0]
    if bare:  # netCDF-C names such axes phony_dim_N
        raise UnsupportedLayout(f"variable {name!r} has no netCDF dimension on axes {bare}")
    # h5r.get_name resolves a reference without building a Dataset object (4x faster)
    return tuple(
        _text(h5py.h5r.get_name(axis_refs[0], handle.id)).rsplit("/", 1)[-1] for axis_refs in refs
    )


def _dtype(dset: h5py.Dataset) -> tuple[np.dtype, Any]:
    """(dtype of the values, dtype for the encoding) as netCDF4-python reports them."""
    string = h5py.check_string_dtype(dset.dtype)
    if string is not None and string.length is None:
        return create_vlen_dtype(str), str
    if h5py.check_enum_dtype(dset.dtype) is not None or dset.dtype.fields is not None:
        raise UnsupportedLayout(f"user-defined type {dset.dtype}")
    if dset.dtype.kind not in "biufS" or h5py.check_vlen_dtype(dset.dtype) is not None:
        raise UnsupportedLayout(f"type {dset.dtype}")
    return dset.dtype, dset.dtype


#: Blosc's compressor codes (the 7th value of its HDF5 filter parameters).
BLOSC_COMPRESSORS = {
    0: "blosc_lz",
    1: "blosc_lz4",
    2: "blosc_lz4hc",
    3: "blosc_snappy",
    4: "blosc_zlib",
    5: "blosc_zstd",
}
#: Filters HDF5 itself provides (never a plugin).
BUILTIN_FILTERS = {"gzip", "shuffle", "fletcher32", "szip", "lzf", "scaleoffset", "nbit"}
FILTER_NAMES = {str(fid): name for name, fid in PLUGIN_FILTERS.items()}


def _plugin(filters: dict[str, Any], name: str) -> tuple[Any, ...] | None:
    fid = PLUGIN_FILTERS[name]
    found = filters.get(str(fid), filters.get(fid))
    return tuple(found) if found is not None else None


def _filters(dset: h5py.Dataset) -> dict[str, Any]:
    """Compression settings as netCDF4-python's ``Variable.filters()`` reports them."""
    filters = dset._filters
    zstd, bzip2, blosc = (_plugin(filters, n) for n in ("zstd", "bzip2", "blosc"))
    complevel = 0
    if dset.compression == "gzip":
        complevel = int(dset.compression_opts)
    elif zstd or bzip2:
        complevel = int((zstd or bzip2)[0])
    elif blosc is not None and len(blosc) >= 7:
        complevel = int(blosc[4])
    return {
        "zlib": dset.compression == "gzip",
        "szip": dset.compression == "szip",
        "zstd": zstd is not None,
        "bzip2": bzip2 is not None,
        "blosc": (
            {"compressor": BLOSC_COMPRESSORS.get(blosc[6], str(blosc[6])), "shuffle": blosc[5]}
            if blosc is not None and len(blosc) >= 7
            else blosc is not None
        ),
        "shuffle": bool(dset.shuffle),
        "complevel": complevel,
        "fletcher32": bool(dset.fletcher32),
    }


def missing_filters(dset: h5py.Dataset) -> list[str]:
    """Names of the HDF5 filters of ``dset`` that this process's h5py cannot decode."""
    missing = []
    for key in dset._filters:
        if key in BUILTIN_FILTERS:
            continue
        try:
            fid = int(key)
        except ValueError:
            continue
        if not h5py.h5z.filter_avail(fid):
            missing.append(f"{FILTER_NAMES.get(key, 'filter')} (HDF5 filter id {fid})")
    return missing


def filter_help(missing: list[str]) -> str:
    return (
        f"it is compressed with {', '.join(missing)}, which this HDF5 cannot decode: "
        "pip install hdf5plugin and import hdf5plugin before reading, or read it with "
        "library='netcdf4' (netCDF4's wheels carry zstd, bzip2 and blosc)"
    )


def _variable(handle: h5py.File, name: str, dset: h5py.Dataset, path: str) -> VariableDescription:
    dims = _variable_dims(handle, name, dset)
    dtype, encoded_dtype = _dtype(dset)
    missing = missing_filters(dset)
    if missing:
        raise UnsupportedLayout(f"variable {name!r}: {filter_help(missing)}")
    attrs = _attributes(dset)
    if dtype.kind == "S" and "_FillValue" in attrs:
        attrs["_FillValue"] = np.bytes_(attrs["_FillValue"])
    encoding: dict[str, Any] = {"dtype": encoded_dtype}
    encoding.update(_filters(dset))
    if dset.chunks is None:
        encoding["contiguous"] = True
        encoding["chunksizes"] = None
    else:
        encoding["contiguous"] = False
        encoding["chunksizes"] = tuple(dset.chunks)
        encoding["preferred_chunks"] = dict(zip(dims, dset.chunks, strict=True))
    if "least_significant_digit" in attrs:
        encoding["least_significant_digit"] = attrs.pop("least_significant_digit")
    encoding["source"] = path
    encoding["original_shape"] = tuple(dset.shape)
    values = None
    nbytes = int(np.prod(dset.shape, dtype=np.int64)) * dtype.itemsize
    if dtype.kind != "O" and nbytes <= SMALL_VARIABLE_BYTES:
        try:
            values = np.asarray(dset[()])
        except OSError as err:
            raise OSError(f"cannot read variable {name!r} of {path!r}: {err}") from err
        values.flags.writeable = False
    return VariableDescription(
        name=name,
        dims=dims,
        shape=tuple(dset.shape),
        dtype=dtype,
        attrs=attrs,
        encoding=encoding,
        values=values,
    )


def walk(
    handle: h5py.File, path: str, identity: FileIdentity, group: str | None
) -> FileDescription:
    """Describe ``group`` of an open handle, holding the HDF5 library lock throughout."""
    with LOCK:
        node = _node(handle, group)
        sizes, unlimited, pure = _dimensions(node)
        variables = {}
        groups = []
        for name, obj in node.items():
            if isinstance(obj, h5py.Group):
                groups.append(name)
            elif isinstance(obj, h5py.Dataset) and name not in pure:
                variables[name] = _variable(handle, name, obj, path)
        file_format = "NETCDF4_CLASSIC" if "_nc3_strict" in handle.attrs else "NETCDF4"
        return FileDescription(
            path=path,
            identity=identity,
            library=LIBRARY,
            group=group,
            file_format=file_format,
            dims=sizes,
            unlimited_dims=frozenset(unlimited),
            attrs=_attributes(node),
            variables=variables,
            groups=tuple(groups),
        )


class _ByteRanges:
    """What byte-range reads of one open h5py file need: its descriptor and the index
    of each variable read so far (or why it is read through h5py)."""

    __slots__ = ("fd", "indexes", "ref")

    def __init__(self, handle: h5py.File, ref: weakref.ref[h5py.File]) -> None:
        self.ref = ref
        self.fd: int = handle.id.get_vfd_handle()
        self.indexes: dict[tuple[str | None, str], ChunkIndex | ContiguousIndex | str] = {}


# id(handle) -> its _ByteRanges, dropped when the handle is garbage-collected. Looked up
# without a lock and without an HDF5 call (a file number or a hash of an h5py object
# takes h5py's global lock): every read of every thread passes here.
_by_handle: dict[int, _ByteRanges] = {}
_by_handle_lock = threading.RLock()  # re-entrant: _forget may run in a GC inside it


def _forget(key: int, ref: weakref.ref[h5py.File]) -> None:
    with _by_handle_lock:
        found = _by_handle.get(key)
        if found is not None and found.ref is ref:
            del _by_handle[key]


def _byte_ranges(handle: h5py.File) -> _ByteRanges:
    key = id(handle)
    found = _by_handle.get(key)
    if found is not None and found.ref() is handle:
        return found
    with LOCK, _by_handle_lock:  # LOCK: get_vfd_handle is an HDF5 call
        found = _by_handle.get(key)
        if found is None or found.ref() is not handle:
            found = _ByteRanges(handle, weakref.ref(handle, lambda r: _forget(key, r)))
            _by_handle[key] = found
    return found


def byte_range_reader(handle: h5py.File, group: str | None, name: str) -> BoxReader | None:
    """A :class:`~xrdist.window.BoxReader` (``reader(key) -> name[key]``, outer
    indexing, or ``reader.read_box(box)``) that reads through ``handle`` by byte ranges
    with no HDF5 call, or None: byte-range reads are off, or the
    variable's index is not built yet, or it is read through h5py. The decision is made
    here, once: the reader reads no option. A stale handle then yields at worst
    wrong bytes, which the caller's check of the file after the read catches. Makes no
    HDF5 call; thread-safe."""
    if not get_option("byte_range_reads"):
        return None
    found = _by_handle.get(id(handle))
    if found is None or found.ref() is not handle:
        return None
    index = found.indexes.get((group, name))
    if not isinstance(index, ChunkIndex | ContiguousIndex):
        return None
    return BoxReader(index, found.fd)


def chunk_index(
    handle: h5py.File, group: str | None, name: str
) -> ChunkIndex | ContiguousIndex | str:
    """The byte-range index of a variable of an open file (built once per handle), or
    the reason it is read through h5py instead."""
    indexes = _byte_ranges(handle).indexes
    found = indexes.get((group, name))
    if found is None:
        with LOCK:
            dset = dataset(handle, group, name)
            found = unsupported_reason(dset) or build_chunk_index(dset, handle.filename, name)
        indexes[(group, name)] = found
    return found


def read_path(handle: h5py.File, group: str | None, name: str) -> str:
    """``"byte-range"``, or ``"h5py: <why>"``: how reads of this variable run."""
    if not get_option("byte_range_reads"):
        return "h5py: byte_range_reads is off"
    index = chunk_index(handle, group, name)
    return f"h5py: {index}" if isinstance(index, str) else "byte-range"


def read(handle: h5py.File, group: str | None, name: str, key: tuple[Any, ...]) -> Any:
    """``variable[key]`` with outer (orthogonal) indexing semantics.

    Chunked numeric variables are read by byte ranges and decoded in this thread (see
    :mod:`xrdist.byterange`); others through h5py, which takes at most one increasing
    index list per selection, so index arrays are read as their bounding slice and
    picked from in memory.
    """
    if get_option("byte_range_reads"):
        index = chunk_index(handle, group, name)
        if not isinstance(index, str):
            return BoxReader(index, _byte_ranges(handle).fd)(key)
    dset = dataset(handle, group, name)
    if h5py.check_string_dtype(dset.dtype) is not None and dset.dtype.kind == "O":
        dset = dset.asstr()
    box, picks = bounding_box(key, dset.shape)
    try:
        data = np.asarray(dset[box])
    except OSError as err:
        where = f"cannot read variable {name!r} of {handle.filename!r}"
        missing = missing_filters(dset)
        if missing:
            raise OSError(f"{where}: {filter_help(missing)}") from err
        chunk = failing_chunk(lambda part: dset[part], box, dset.chunks) if dset.chunks else None
        if chunk is not None:
            where += f", chunk {chunk}"
        raise OSError(f"{where}: {err}") from err
    return pick(data, picks)
