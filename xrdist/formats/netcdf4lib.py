"""netCDF4/HDF5 and netCDF3 files through netCDF4-python (netCDF-C).

netCDF-C is not thread-safe, and neither is the HDF5 copy inside its wheel, so *every*
call into a handle from this module, open, each metadata call, reads and close, runs
under the library lock ``library_lock(NETCDF_C)``. (xarray's ``netcdf4`` engine makes some
metadata calls outside its lock, which is why it crashes under threads.)

The handles this module opens have automatic masking, scaling and char-to-string
conversion switched off once, at open: xrdist decodes with xarray's own CF decoders, as
xarray's ``netcdf4`` engine does, so the raw values and attributes must reach them.

Notes
-----
Functions here are thread-safe (they take the library lock). Handles are shared through
the handle manager; :func:`proxy` gives the picklable way to reach one.
"""

from __future__ import annotations

import os
from typing import Any

import netCDF4
import numpy as np
from xarray.coding.strings import create_vlen_dtype

from xrdist.description import SMALL_VARIABLE_BYTES, FileDescription, VariableDescription
from xrdist.identity import FileIdentity
from xrdist.locks import NETCDF_C, library_lock
from xrdist.proxy import HandleProxy
from xrdist.window import bounding_box, failing_chunk

LIBRARY = "netcdf4"
LOCK = library_lock(NETCDF_C)


def open_raw(path: str, mode: str = "r") -> netCDF4.Dataset:
    """Open with netCDF4-python, masking/scaling/char conversion off (caller holds LOCK).
    netCDF-C's failures to open a damaged file (a ``RuntimeError`` for some) are OSErrors."""
    try:
        ds = netCDF4.Dataset(path, mode=mode)
    except RuntimeError as err:
        raise OSError(f"netCDF-C: {err}") from err
    ds.set_auto_maskandscale(False)
    ds.set_auto_chartostring(False)
    return ds


def _compressors(var: netCDF4.Variable) -> str:
    filters = var.filters() or {}
    names = [k for k in ("zstd", "bzip2", "blosc", "szip") if filters.get(k)]
    return ", ".join(names) or "a filter"


def _filter_error(var: netCDF4.Variable, path: str, err: Exception) -> OSError:
    """A read failed inside netCDF-C's filter pipeline: say which filter and what to do."""
    plugin_path = os.environ.get("HDF5_PLUGIN_PATH", "<unset>")
    return OSError(
        f"cannot read variable {var.name!r} of {path!r}: {err}. It is compressed with "
        f"{_compressors(var)}, and netCDF-C found no plugin for it in HDF5_PLUGIN_PATH "
        f"({plugin_path!r}); unset HDF5_PLUGIN_PATH so netCDF4 uses the plugins of its "
        "wheel, or pip install hdf5plugin and point HDF5_PLUGIN_PATH at hdf5plugin.PLUGIN_PATH"
    )


def _values(var: netCDF4.Variable, path: str, key: Any) -> Any:
    """``var[key]`` (caller holds LOCK); a failure names the file, the variable and, for a
    chunked variable, the first on-disk chunk of the window that does not read."""
    try:
        return var[key]
    except RuntimeError as err:
        if "filter" in str(err).lower():
            raise _filter_error(var, path, err) from err
        where = f"cannot read variable {var.name!r} of {path!r}"
        chunking = var.chunking() if var.ndim else None
        if isinstance(chunking, list):
            box, _ = bounding_box((slice(None),) * var.ndim if key is ... else key, var.shape)
            chunk = failing_chunk(lambda part: var[part], box, tuple(chunking))
            if chunk is not None:
                where += f", chunk {chunk}"
        raise OSError(f"{where}: {err}") from err


def proxy(path: str) -> HandleProxy:
    """The picklable handle proxy of ``path`` for this library."""
    return HandleProxy.create(open_raw, path, mode="r", lock=LOCK)


def _group(ds: netCDF4.Dataset, group: str | None) -> netCDF4.Dataset:
    if group in (None, "", "/"):
        return ds
    node = ds
    for name in group.strip("/").split("/"):
        try:
            node = node.groups[name]
        except KeyError:
            raise OSError(
                f"group {group!r} not found in {ds.filepath()!r}; groups at this level: "
                f"{sorted(node.groups)}"
            ) from None
    return node


def _variable(name: str, var: netCDF4.Variable, path: str) -> VariableDescription:
    attrs = {k: var.getncattr(k) for k in var.ncattrs()}
    encoding: dict[str, Any] = {}
    if isinstance(var.datatype, netCDF4.EnumType):
        dtype = np.dtype(
            var.dtype,
            metadata={"enum": var.datatype.enum_dict, "enum_name": var.datatype.name},
        )
        encoding["dtype"] = dtype
    else:
        dtype = create_vlen_dtype(str) if var.dtype is str else np.dtype(var.dtype)
        encoding["dtype"] = var.dtype
    if dtype.kind == "S" and "_FillValue" in attrs:  # netCDF4-python gives the wrong type
        attrs["_FillValue"] = np.bytes_(attrs["_FillValue"])
    filters = var.filters()
    if filters is not None:
        encoding.update(filters)
    chunking = var.chunking()
    if chunking is not None:
        if chunking == "contiguous":
            encoding["contiguous"] = True
            encoding["chunksizes"] = None
        else:
            encoding["contiguous"] = False
            encoding["chunksizes"] = tuple(chunking)
            encoding["preferred_chunks"] = dict(zip(var.dimensions, chunking, strict=True))
    if "least_significant_digit" in attrs:
        encoding["least_significant_digit"] = attrs.pop("least_significant_digit")
    encoding["source"] = path
    encoding["original_shape"] = tuple(var.shape)
    described = VariableDescription(
        name=name,
        dims=tuple(var.dimensions),
        shape=tuple(var.shape),
        dtype=dtype,
        attrs=attrs,
        encoding=encoding,
    )
    if dtype.kind != "O" and described.nbytes <= SMALL_VARIABLE_BYTES:
        values = np.asarray(_values(var, path, ...))
        values.flags.writeable = False
        return VariableDescription(**{**described.__dict__, "values": values})
    return described


def walk(
    handle: netCDF4.Dataset, path: str, identity: FileIdentity, group: str | None
) -> FileDescription:
    """Describe ``group`` of an open handle. Takes the library lock for the whole walk."""
    with LOCK:
        node = _group(handle, group)
        return FileDescription(
            path=path,
            identity=identity,
            library=LIBRARY,
            group=group,
            file_format=handle.data_model,
            dims={k: len(v) for k, v in node.dimensions.items()},
            unlimited_dims=frozenset(k for k, v in node.dimensions.items() if v.isunlimited()),
            attrs={k: node.getncattr(k) for k in node.ncattrs()},
            variables={k: _variable(k, v, path) for k, v in node.variables.items()},
            groups=tuple(node.groups),
        )


def read(handle: netCDF4.Dataset, group: str | None, name: str, key: tuple[Any, ...]) -> Any:
    """``variable[key]`` (outer indexing), under the library lock."""
    with LOCK:
        return _values(_group(handle, group).variables[name], handle.filepath(), key)
