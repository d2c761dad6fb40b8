"""From a file's description to xarray's decoded, lazy ``Dataset``.

The variables are lazy :class:`~xrdist.array.FileArray` objects (or the small values
read during the walk); decoding (scale/offset, masking, times, strings, coordinates) is
xarray's own ``decode_cf_variables``, applied to exactly the raw variables and
attributes xarray's ``netcdf4`` engine sees, so results are identical to it. Decoded
datasets are kept on disk per file and decoding options (:mod:`xrdist.persist`).

Notes
-----
Thread-safe. The datasets are picklable without data or handles.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from xarray import Dataset, Variable, conventions
from xarray import __version__ as xr_version
from xarray.coding.times import CFDatetimeCoder, CFTimedeltaCoder
from xarray.core import indexing
from xarray.core.coordinates import Coordinates

from xrdist.array import FileArray
from xrdist.decoding import fuse_decoding
from xrdist.describing import describe_file
from xrdist.description import FileDescription
from xrdist.formats import get_format
from xrdist.identity import FileIdentity
from xrdist.options import get_option


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


def _set_accessor_cache(ds: Dataset) -> None:
    """Set xarray's accessor cache of ``ds`` (empty, as when unused) if unset: pickling
    looks up every slot, and a miss on an unset one runs xarray's "did you mean" search
    over the variable names, a third of the pickle's time."""
    slot = vars(Dataset).get("_cache")
    if slot is not None:
        try:
            slot.__get__(ds, Dataset)
        except AttributeError:
            slot.__set__(ds, {})


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
    with persist.batch():  # the description and the dataset: one transaction
        description = describe_file(path, library, group)
        found = description.library, dataset_from_description(description, **decode)
        if options is not None:
            key = (path, description.identity, library, group, options, xr_version)
            _set_accessor_cache(found[1])
            persist.store(key, found, persist.DATASET)
    return found
