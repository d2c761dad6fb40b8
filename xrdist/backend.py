"""``xr.open_dataset(path, engine="xrdist")``: the xarray backend entrypoint.

Opening a file: one ``stat`` and, unless the file was described before in this process,
one walk of its metadata through a leased handle (see :mod:`xrdist.description`). The
variables are lazy :class:`~xrdist.array.FileArray` objects; decoding (scale/offset,
masking, times, strings, coordinates) is xarray's own ``decode_cf_variables``, applied
to exactly the raw variables and attributes xarray's ``netcdf4`` engine sees, so results
are identical to it.

Notes
-----
Thread-safe: files may be opened from any number of threads at once. Datasets opened here
are picklable without data or handles.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterable
from typing import Any

from xarray import Dataset, DataTree, Variable, conventions
from xarray import __version__ as xr_version
from xarray.backends import BackendEntrypoint
from xarray.coding.times import CFDatetimeCoder, CFTimedeltaCoder
from xarray.core import indexing
from xarray.core.coordinates import Coordinates

from xrdist.array import LIBRARY_ERRORS, FileArray, naming_path
from xrdist.decoding import fuse_decoding
from xrdist.description import FileDescription, describe
from xrdist.formats import FORMATS, get_format
from xrdist.identity import FileIdentity
from xrdist.locks import canonical_path
from xrdist.options import get_option

NETCDF_EXTENSIONS = (".nc", ".nc3", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5", ".he5", ".hdf")
TIFF_EXTENSIONS = (".tif", ".tiff", ".gtiff")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NETCDF3_MAGICS = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
#: classic TIFF and BigTIFF, little- and big-endian
TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: HDF5 allows a user block before the superblock: the signature sits at 0 or at a power
#: of two from 512 on.
HDF5_SIGNATURE_OFFSETS = (0, *(512 << k for k in range(24)))

AUTO = "auto"
TIFF_LIBRARY = "tifffile"
DEFAULT_LIBRARY = AUTO
LIBRARIES = (AUTO, *FORMATS)


def read_magic(path: str, offset: int = 0) -> bytes:
    """At most 8 bytes at ``offset``, read unbuffered (one ``pread``, no page read-ahead)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 8, offset)
    finally:
        os.close(fd)


def sniff_format(path: str) -> str | None:
    """``"hdf5"``, ``"netcdf3"``, ``"tiff"`` or None, from the file's signature bytes."""
    first = read_magic(path)
    if first.startswith(NETCDF3_MAGICS):
        return "netcdf3"
    if first.startswith(TIFF_MAGICS):
        return "tiff"
    if first == HDF5_MAGIC:
        return "hdf5"
    size = os.path.getsize(path)
    for offset in HDF5_SIGNATURE_OFFSETS[1:]:
        if offset + 8 > size:
            break
        if read_magic(path, offset) == HDF5_MAGIC:
            return "hdf5"
    return None


def check_readable(path: str) -> str:
    """Raise a clear error naming ``path`` if it is not a netCDF/HDF5/TIFF file we can
    open; return its format (see :func:`sniff_format`)."""
    FileIdentity.of(path)  # missing file or directory: a clear OSError naming the path
    found = sniff_format(path)
    if found is None:
        first = read_magic(path)
        what = "is empty" if not first else f"starts with {first!r}"
        raise ValueError(
            f"{path!r} is not a netCDF, HDF5 or TIFF file: it {what}, while netCDF-3 files "
            f"start with b'CDF', netCDF-4/HDF5 files with {HDF5_MAGIC!r} and TIFF files "
            "with b'II*\\x00' or b'MM\\x00*'. Check the path, or pass the engine that "
            "reads this format."
        )
    return found


class _CannotOpen(OSError):
    """The library could not open the file at all (as opposed to failing to walk it)."""


def _walk_with(
    library: str, path: str, group: str | None, fallback: bool = False
) -> FileDescription:
    """Describe ``path`` through a lease of ``library``'s handle. Errors name the path;
    with ``fallback``, a file the library cannot open raises :class:`_CannotOpen`."""
    from xrdist.formats.h5pylib import UnsupportedLayout

    fmt = get_format(library)
    lease = fmt.proxy(path).lease()
    try:
        handle = lease.__enter__()
    except OSError as err:
        if fallback:
            raise _CannotOpen(str(err)) from err
        raise
    try:
        assert lease.identity is not None
        return fmt.walk(handle, path, lease.identity, group)
    except UnsupportedLayout:
        raise
    except LIBRARY_ERRORS as err:  # damaged metadata: say which file
        if path in str(err):
            raise
        raise naming_path(err, f"cannot read the metadata of {path!r} with {library}") from err
    except MemoryError as err:  # metadata is small: a damaged header claims a huge size
        err.add_note(f"while reading the metadata of {path!r} with {library} (damaged?)")
        raise
    finally:
        lease.__exit__(None, None, None)


#: Filters h5py decodes itself (or xrdist by byte ranges) in every installation.
H5PY_FILTERS = frozenset({"zlib", "shuffle", "fletcher32", "complevel"})


def _h5py_reads(description: FileDescription) -> bool:
    """Whether h5py can read every variable netCDF-C described: plain numeric, char and
    string types, compressed (if at all) with the filters every HDF5 has."""
    for var in description.variables.values():
        if var.dtype.metadata and "enum" in var.dtype.metadata:
            return False
        if var.dtype.kind not in "biufcSUO" or var.dtype.fields is not None:
            return False
        if var.dtype.kind == "O" and var.encoding.get("dtype") is not str:
            return False
        filters = {k for k, v in var.encoding.items() if v and k in FILTER_KEYS}
        if not filters <= H5PY_FILTERS:
            return False
    return True


#: netCDF-4 encoding keys that name filters (netCDF4-python's ``Variable.filters()``).
FILTER_KEYS = frozenset(
    {"zlib", "shuffle", "fletcher32", "szip", "zstd", "bzip2", "blosc", "complevel"}
)


def _walk_auto(path: str, group: str | None) -> FileDescription:
    """netCDF-4/HDF5 files are *described* by netCDF-C, which reads all metadata at open
    (several times faster than walking it through h5py), and *read* through h5py (by
    byte ranges, outside any library lock) when h5py reads all their types and filters;
    otherwise, and for netCDF-3, netCDF-C does both. HDF5 files netCDF-C cannot open are
    walked by h5py."""
    from xrdist.formats.h5pylib import UnsupportedLayout

    if sniff_format(path) != "hdf5":
        return _walk_with("netcdf4", path, group)
    try:
        description = _walk_with("netcdf4", path, group, fallback=True)
    except _CannotOpen as cannot:
        try:
            return _walk_with("h5py", path, group)
        except UnsupportedLayout as err:
            get_format("h5py").proxy(path).close()
            raise OSError(
                f"{path!r} is an HDF5 file that netCDF-C cannot open ({cannot}) and that "
                f"h5py cannot describe as netCDF ({err}): damaged, or not netCDF"
            ) from err
    if not _h5py_reads(description):
        return description
    get_format("netcdf4").proxy(path).close()  # described: reads will use h5py
    return dataclasses.replace(description, library="h5py")


def describe_file(path: str, library: str, group: str | None) -> FileDescription:
    """The (cached) description of one group of one file. ``library="auto"`` picks h5py
    for netCDF-4 files, netCDF-C for netCDF-3 files and layouts h5py cannot describe, and
    tifffile for TIFFs (the description's ``library`` says which). A TIFF's ``group`` is
    its image: None, or ``"overview/N"`` (see :mod:`xrdist.formats.tifflib`)."""

    def walk() -> FileDescription:
        found = check_readable(path)
        if found == "tiff" or library == TIFF_LIBRARY:
            if library not in (AUTO, TIFF_LIBRARY) or found != "tiff":
                what = "a TIFF" if found == "tiff" else f"not a TIFF but {found}"
                raise ValueError(
                    f"{path!r} is {what}: library={library!r} cannot read it; use library='auto'"
                )
            return _walk_with(TIFF_LIBRARY, path, group)
        if library == AUTO:
            return _walk_auto(path, group)
        from xrdist.formats.h5pylib import UnsupportedLayout

        try:
            return _walk_with(library, path, group)
        except UnsupportedLayout as err:
            raise ValueError(
                f"{path!r}: library={library!r} cannot describe this file ({err}); "
                "use library='auto' or library='netcdf4'"
            ) from None

    return describe(path, library, group, walk)


def raw_variables(description: FileDescription) -> dict[str, Variable]:
    """Lazy, undecoded xarray Variables of a described file."""
    fmt = get_format(description.library)
    proxy = fmt.proxy(description.path)
    variables = {}
    for name, var in description.variables.items():
        if var.values is not None:  # small: read during the walk
            variables[name] = Variable(
                var.dims, var.values.copy(), dict(var.attrs), dict(var.encoding)
            )
            continue
        array = FileArray(
            proxy,
            description.library,
            description.group,
            name,
            var.shape,
            var.dtype,
            description.identity,
        )
        variables[name] = Variable(
            var.dims,
            indexing.LazilyIndexedArray(array),
            dict(var.attrs),
            dict(var.encoding),
        )
    return variables


def decode_dataset(
    variables: dict[str, Variable],
    attrs: dict[str, Any],
    encoding: dict[str, Any],
    *,
    mask_and_scale: bool = True,
    decode_times: Any = True,
    concat_characters: bool = True,
    decode_coords: Any = True,
    drop_variables: str | Iterable[str] | None = None,
    use_cftime: bool | None = None,
    decode_timedelta: Any = None,
    replace: dict[str, Any] | None = None,
) -> Dataset:
    """Decode raw variables into a lazy Dataset, exactly as xarray decodes a store.

    Dimension coordinates get their default (pandas) indexes here, as xarray's open
    functions would add them afterwards: made with the dataset, they cost a third of what
    adding them to a made dataset costs (an alignment), which matters when thousands of
    files are opened one by one.

    ``replace`` maps names to already decoded data that takes the place of the decoded
    variable's data (same attributes and encoding), for variables decoded file by file.
    With the option ``decode_in_readers`` (default), elementwise decoding of stacked
    variables runs in the reads, file by file (:mod:`xrdist.decoding`).
    """
    decoded, attrs, coord_names = conventions.decode_cf_variables(
        variables,
        dict(attrs),
        mask_and_scale=mask_and_scale,
        decode_times=decode_times,
        concat_characters=concat_characters,
        decode_coords=decode_coords,
        drop_variables=drop_variables,
        use_cftime=use_cftime,
        decode_timedelta=decode_timedelta,
    )
    for name, data in (replace or {}).items():
        if name in decoded:
            var = decoded[name]
            decoded[name] = Variable(data.dims, data.data, var.attrs, var.encoding)
    if get_option("decode_in_readers"):
        for name, var in decoded.items():
            fused = fuse_decoding(var._data)
            if fused is not var._data:
                decoded[name] = Variable(var.dims, fused, var.attrs, var.encoding, fastpath=True)
    data_vars, coord_vars = {}, {}
    for name, var in decoded.items():
        if name in coord_names or var.dims == (name,):
            coord_vars[name] = var
        else:
            data_vars[name] = var
    ds = Dataset(data_vars, coords=Coordinates(coord_vars), attrs=attrs)
    ds.encoding = encoding
    return ds


def dataset_from_description(description: FileDescription, **decode: Any) -> Dataset:
    """Decode one described file into a lazy Dataset (a decoding error gets a note that
    names the file)."""
    encoding = {"unlimited_dims": set(description.unlimited_dims), "source": description.path}
    try:
        return decode_dataset(raw_variables(description), description.attrs, encoding, **decode)
    except Exception as err:
        note_path(err, description.path)
        raise


def note_path(error: BaseException, path: str) -> None:
    """Add a note naming ``path`` to an error (of xarray's decoders, say) that does not."""
    if path not in str(error) and not any(path in n for n in getattr(error, "__notes__", ())):
        error.add_note(f"while decoding the variables of {path!r}")


def _options_key(decode: dict[str, Any]) -> str | None:
    """The decoding options as a stable string, or None if one is neither plain data nor
    one of xarray's time coders (whose settings are plain): such opens are decoded
    afresh each time."""
    parts = []
    for name, value in sorted(decode.items()):
        if isinstance(value, list | tuple | set | frozenset):
            if not all(isinstance(v, str) for v in value):
                return None
            value = tuple(sorted(value))
        elif isinstance(value, CFDatetimeCoder | CFTimedeltaCoder):
            settings = sorted(getattr(value, "__dict__", {"?": object()}).items())
            if not all(v is None or isinstance(v, bool | int | str) for _, v in settings):
                return None
            value = (type(value).__name__, *settings)
        elif value is not None and not isinstance(value, bool | int | str):
            return None
        parts.append(f"{name}={value!r}")
    return ",".join(parts)


def decoded_dataset(
    path: str, library: str, group: str | None, **decode: Any
) -> tuple[str, Dataset]:
    """The library that reads one file, and the file's decoded, lazy dataset; kept on
    disk (:mod:`xrdist.persist`) per file identity, decoding options and xarray version,
    so that reopening it, in this process or another, unpickles a finished dataset
    (about 0.1 ms) instead of describing and decoding it again (about 2 ms for a small
    file)."""
    from xrdist import persist

    options = _options_key(decode)
    try:
        identity = FileIdentity.of(path)
    except OSError:  # describe_file says what is wrong, in its words
        options = None
    if options is not None:
        key = (path, identity, library, group, options, xr_version)
        found = persist.load(key, persist.DATASET)
        if found is not None:
            return found
    description = describe_file(path, library, group)
    found = description.library, dataset_from_description(description, **decode)
    if options is not None:
        key = (path, description.identity, library, group, options, xr_version)
        persist.store(key, found, persist.DATASET)
    return found


class XrdistBackendEntrypoint(BackendEntrypoint):
    """netCDF4/HDF5, netCDF3 and GeoTIFF/COG files through xrdist's handle cache.

    Options beyond xarray's usual decoding options: ``group`` (a path like ``"a/b"``) and
    ``library`` (the native library that reads the file: ``"auto"`` (default), ``"h5py"``
    or ``"netcdf4"``).
    """

    description = (
        "netCDF4/HDF5, netCDF3 and GeoTIFF/COG through xrdist's handle cache, safe under threads"
    )
    supports_groups = True
    url = "https://github.com/xrdist/xrdist"
    open_dataset_parameters = (
        "filename_or_obj",
        "mask_and_scale",
        "decode_times",
        "concat_characters",
        "decode_coords",
        "drop_variables",
        "use_cftime",
        "decode_timedelta",
        "group",
        "library",
        "overview_level",
        "concat_dim",
        "times",
        "combine",
        "data_vars",
    )

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        if isinstance(filename_or_obj, list | tuple):
            return bool(filename_or_obj) and all(map(self.guess_can_open, filename_or_obj))
        if not isinstance(filename_or_obj, str | os.PathLike):
            return False
        path = os.fspath(filename_or_obj)
        if not isinstance(path, str):
            return False
        if path.lower().endswith(NETCDF_EXTENSIONS + TIFF_EXTENSIONS):
            return True
        try:
            return sniff_format(path) is not None
        except OSError:
            return False

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        mask_and_scale: bool = True,
        decode_times: Any = True,
        concat_characters: bool = True,
        decode_coords: Any = True,
        drop_variables: str | Iterable[str] | None = None,
        use_cftime: bool | None = None,
        decode_timedelta: Any = None,
        group: str | None = None,
        library: str = DEFAULT_LIBRARY,
        overview_level: int | None = None,
        concat_dim: str | None = None,
        times: Any = None,
        combine: str = "by_coords",
        data_vars: str = "all",
    ) -> Dataset:
        """One file, or (a list or glob pattern) a stack of files as ``open_mfdataset``
        would open it; ``concat_dim``, ``times``, ``combine`` and ``data_vars`` apply to
        stacks (see :func:`xrdist.open_mfdataset`).
        ``overview_level`` (TIFF only) reads an overview: 0 is the first (largest)."""
        decode = {
            "mask_and_scale": mask_and_scale,
            "decode_times": decode_times,
            "concat_characters": concat_characters,
            "decode_coords": decode_coords,
            "drop_variables": drop_variables,
            "use_cftime": use_cftime,
            "decode_timedelta": decode_timedelta,
        }
        if library not in LIBRARIES:
            raise ValueError(f"library={library!r} is not supported; choose one of {LIBRARIES}")
        if overview_level is not None:
            if group is not None:
                raise ValueError("pass group= (netCDF) or overview_level= (TIFF), not both")
            from xrdist.formats.tifflib import overview_group

            group = overview_group(overview_level)
        is_glob = isinstance(filename_or_obj, str) and glob.has_magic(filename_or_obj)
        if isinstance(filename_or_obj, list | tuple) or is_glob:
            from xrdist.mfdataset import stack_dataset
            from xrdist.scan import scan

            stack = scan(
                filename_or_obj,
                library=library,
                group=group,
                concat_dim=concat_dim,
                combine=combine,
                decode=decode,
                data_vars=data_vars,
                times=times,
            )
            return stack_dataset(stack, data_vars=data_vars, **decode)
        if not isinstance(filename_or_obj, str | os.PathLike):
            raise TypeError(
                "engine='xrdist' opens local files by path, a list of paths or a glob "
                f"pattern; got {type(filename_or_obj)}"
            )
        path = canonical_path(filename_or_obj)
        reader, ds = decoded_dataset(path, library, group, **decode)
        ds.set_close(get_format(reader).proxy(path).close)
        return ds

    def open_groups_as_dict(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        group: str | None = None,
        library: str = DEFAULT_LIBRARY,
        **decode: Any,
    ) -> dict[str, Dataset]:
        """Every group of the file (below ``group``), by path, as ``open_dataset`` opens it."""
        path = canonical_path(filename_or_obj)
        root = "/" + (group or "").strip("/")
        out: dict[str, Dataset] = {}
        pending = [root]
        while pending:
            node = pending.pop(0)
            description = describe_file(path, library, None if node == "/" else node)
            out[node] = dataset_from_description(description, **decode)
            prefix = node.rstrip("/")
            pending.extend(f"{prefix}/{child}" for child in description.groups)
        return out

    def open_datatree(  # type: ignore[override]
        self, filename_or_obj: Any, **kwargs: Any
    ) -> DataTree:
        """The file's group hierarchy as a ``DataTree`` (``xr.open_datatree``)."""
        groups = self.open_groups_as_dict(filename_or_obj, **kwargs)
        root = next(iter(groups))
        return DataTree.from_dict({k[len(root) :] or "/": v for k, v in groups.items()})
