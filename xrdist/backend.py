"""``xr.open_dataset(path, engine="xrdist")``: the xarray backend entrypoint.

Opening a file: one ``stat`` and, unless the file was described before, one walk of its
metadata through a leased handle (:mod:`xrdist.describing`), then xarray's own decoding
(:mod:`xrdist.datasets`), so results are identical to xarray's ``netcdf4`` engine. A
list of paths or a glob pattern opens a stack, as :func:`xrdist.open_mfdataset` does.

Notes
-----
Thread-safe: files may be opened from any number of threads at once. Datasets opened here
are picklable without data or handles.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from typing import Any

from xarray import Dataset, DataTree
from xarray.backends import BackendEntrypoint

from xrdist.datasets import dataset_from_description, decoded_dataset
from xrdist.describing import (
    DEFAULT_LIBRARY,
    NETCDF_EXTENSIONS,
    TIFF_EXTENSIONS,
    check_library,
    describe_file,
    local_path,
    sniff_format,
)
from xrdist.formats import get_format
from xrdist.locks import canonical_path


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
        check_library(library)
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
        path = canonical_path(local_path(filename_or_obj))
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
        path = canonical_path(local_path(filename_or_obj))
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
