"""Describing one file: its format (from its first bytes), the library that reads it,
and its description, walked once and cached (:mod:`xrdist.description`).

``library="auto"`` picks the library per file: netCDF-C describes netCDF-4/HDF5 files
(its open reads all metadata at once) and h5py reads them by byte ranges where it can;
netCDF-C reads netCDF-3 files; tifffile reads TIFFs. Errors name the file and what to do.

Notes
-----
Thread-safe: files may be described from any number of threads at once (each walk runs
under a lease of the file's handle and its library's lock).
"""

from __future__ import annotations

import dataclasses
import os

from xrdist.array import LIBRARY_ERRORS, naming_path
from xrdist.description import FileDescription, describe
from xrdist.formats import FORMATS, get_format
from xrdist.identity import FileIdentity

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


def check_library(library: str) -> None:
    """Raise a ``ValueError`` listing the choices if ``library`` is not one of them."""
    if library not in LIBRARIES:
        raise ValueError(f"library={library!r} is not supported; choose one of {LIBRARIES}")


def local_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a local path, ``~`` expanded (as xarray does); a URL is refused with
    an error that says what to do (xrdist reads local files, by byte ranges)."""
    text = os.fspath(path)
    if "://" in text:
        raise ValueError(
            f"{text!r} is a URL: xrdist reads local files (and files on mounted network "
            "file systems). Download it first, or open it with engine='h5netcdf' and fsspec."
        )
    return os.path.expanduser(text)


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


def _overview_prefix() -> str:
    """The group prefix of a TIFF's overviews (imported only when a group is given)."""
    from xrdist.formats.tifflib import OVERVIEW_PREFIX

    return OVERVIEW_PREFIX


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
        if group is not None and group.startswith(_overview_prefix()):
            raise ValueError(
                f"overview_level= reads the overviews of a TIFF; {path!r} is {found}, not a "
                "TIFF (use group= for the groups of a netCDF-4 file)"
            )
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
