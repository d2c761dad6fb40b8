"""``xrdist.open_mfdataset``: many files as one dataset, read in the chunks you ask for.

The pipeline: :func:`~xrdist.scan.scan` (describe and validate) -> :func:`stack_dataset`
(one lazy :class:`~xrdist.array.StackArray` per stacked variable, decoded by xarray's own
CF decoders) -> :func:`~xrdist.plan.plan_variable` per variable -> chunking. Because each
stacked variable is *one* lazy array over all files, chunking it gives one dask task per
output chunk, and each task reads its window straight from every file it spans. Where
the requested chunks would decode far more than they need, the plan reads on-disk-aligned
chunks and rechunks (dask's P2P rechunk on a distributed cluster).

Results are identical to ``xr.open_mfdataset(paths, ...).chunk(chunks)`` with xarray's
default ``data_vars="all"`` and ``coords="different"`` for files that stack exactly
(same variables and grids; see :mod:`xrdist.scan` for what is checked).

Notes
-----
Thread-safe. The datasets returned pickle without data or handles.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import dask
import numpy as np
import psutil
from dask.system import CPU_COUNT
from dask.utils import parse_bytes
from xarray import Dataset, Variable

from xrdist.array import FileArray, StackArray
from xrdist.datasets import decode_dataset
from xrdist.decoding import decode_block, stored_and_decoding
from xrdist.describing import DEFAULT_LIBRARY
from xrdist.formats import get_format
from xrdist.labels import TimesSpec, band_of
from xrdist.plan import (
    DEFAULT_AMPLIFICATION_THRESHOLD,
    AmplificationWarning,
    Layout,
    MemoryBudgetWarning,
    Plan,
    VariablePlan,
    format_bytes,
    plan_variable,
)
from xrdist.scan import Stack, StackError, _active_client, coordinate_names, expand_paths, scan

#: Upper bound of the default memory budget per task.
MAX_DEFAULT_MAX_MEM = 1024**3


def _concatenated_coordinates(stack: Stack) -> dict[str, Variable]:
    """The per-file decoded coordinates of the stack, concatenated along it."""
    out = {}
    for name in stack.per_file:
        pieces = [coords[name] for coords in stack.decoded]
        axis = pieces[0].dims.index(stack.concat_dim)
        values = np.concatenate([np.asarray(p.values) for p in pieces], axis=axis)
        out[name] = Variable(pieces[0].dims, values)
    return out


def stack_dataset(stack: Stack, *, data_vars: str = "all", **decode: Any) -> Dataset:
    """The lazy, decoded dataset of a validated stack (no dask)."""
    if data_vars not in ("all", "minimal"):
        raise ValueError(f"data_vars must be 'all' or 'minimal', not {data_vars!r}")
    first, dim = stack.first, stack.concat_dim
    fmt = get_format(stack.library)
    proxies = [fmt.proxy(p) for p in stack.paths]
    identities = [d.identity for d in stack.descriptions]
    starts, total = stack.starts, stack.starts[-1]
    coords = coordinate_names(first)
    per_file = stack.per_file  # derived from the first file's coordinates: once
    raw: dict[str, Variable] = {}
    for name, var in first.variables.items():
        attrs, encoding = dict(var.attrs), dict(var.encoding)
        if dim in var.dims:
            if name in per_file:
                raw[name] = Variable(var.dims, var.values.copy(), attrs, encoding)
                continue
            axis = var.dims.index(dim)
            shape = (*var.shape[:axis], total, *var.shape[axis + 1 :])
            array = StackArray(
                proxies,
                identities,
                stack.library,
                stack.group,
                name,
                shape,
                var.dtype,
                axis,
                starts,
            )
            raw[name] = Variable(var.dims, _lazy(array), attrs, encoding)
        elif data_vars == "all" and name not in coords:
            dims, shape = (dim, *var.dims), (total, *var.shape)
            if var.values is not None:  # each file's own (small) values, repeated
                data: Any = np.concatenate(
                    [
                        np.broadcast_to(d.variables[name].values, (n, *var.shape))
                        for d, n in zip(stack.descriptions, stack.file_lengths, strict=True)
                    ]
                )
            else:
                data = _lazy(
                    StackArray(
                        proxies,
                        identities,
                        stack.library,
                        stack.group,
                        name,
                        shape,
                        var.dtype,
                        0,
                        starts,
                        in_files=False,
                    )
                )
            raw[name] = Variable(dims, data, attrs, encoding)
        elif var.values is not None:
            raw[name] = Variable(var.dims, var.values.copy(), attrs, encoding)
        else:
            array = FileArray(
                proxies[0],
                stack.library,
                stack.group,
                name,
                var.shape,
                var.dtype,
                first.identity,
            )
            raw[name] = Variable(var.dims, _lazy(array), attrs, encoding)
    replace = _concatenated_coordinates(stack)
    # Placeholders of the right length for the variables decoded file by file.
    for name in per_file:
        raw[name] = Variable(
            raw[name].dims,
            _placeholder(raw[name], replace[name]),
            raw[name].attrs,
            raw[name].encoding,
        )
    encoding = {"unlimited_dims": set(first.unlimited_dims), "source": first.path}
    try:
        ds = decode_dataset(raw, first.attrs, encoding, replace=replace, **decode)
    except Exception as err:
        err.add_note(f"while decoding the variables of the stack of {first.path!r} and others")
        raise
    if stack.labels is not None:  # scenes: each file's time (indexed, as decode_dataset's)
        ds = ds.assign_coords({dim: Variable((dim,), stack.labels)})
    return ds


def _lazy(array: Any) -> Any:
    from xarray.core import indexing

    return indexing.LazilyIndexedArray(array)


def _placeholder(raw: Variable, decoded: Variable) -> np.ndarray:
    """Raw-typed values of the decoded variable's shape (decoding needs the shape; the
    values are replaced by the per-file decoded ones)."""
    reps = [
        decoded.shape[i] // max(1, raw.shape[i]) if raw.shape[i] else 1 for i in range(raw.ndim)
    ]
    tiled = np.tile(raw.values, reps) if raw.size else np.empty(decoded.shape, raw.dtype)
    return tiled[tuple(slice(0, n) for n in decoded.shape)]


# -- planning ---------------------------------------------------------------------------


def default_max_mem() -> int:
    """Memory per task: a quarter of the memory per thread (of the smallest worker on a
    distributed cluster), at most 1 GiB."""
    client = _active_client()
    if client is not None:
        workers = client.scheduler_info().get("workers", {}).values()
        per_thread = [
            w["memory_limit"] / max(1, w["nthreads"]) for w in workers if w.get("memory_limit")
        ]
        if per_thread:
            return int(min(min(per_thread) / 4, MAX_DEFAULT_MAX_MEM))
    total = psutil.virtual_memory().total
    return int(min(total / CPU_COUNT / 4, MAX_DEFAULT_MAX_MEM))


def memory_bytes(value: int | str) -> int:
    """A memory budget as bytes: a positive number, or a string such as ``"2GiB"`` or
    ``"500 MB"`` (as dask writes them)."""
    try:
        found = parse_bytes(value) if isinstance(value, str) else int(value)
    except (ValueError, TypeError):
        found = None
    if found is None or found <= 0 or isinstance(value, bool):
        raise ValueError(
            f"max_mem={value!r}: give a positive number of bytes or a string such as "
            "'2GiB' or '500MB'"
        )
    return found


def _total_threads() -> int:
    client = _active_client()
    if client is not None:
        workers = client.scheduler_info().get("workers", {}).values()
        return max(1, sum(w.get("nthreads", 1) for w in workers))
    return CPU_COUNT


def layout_of(stack: Stack, ds: Dataset, name: str) -> Layout:
    """The planner's view of one variable of the stacked dataset."""
    var = ds.variables[name]
    described = stack.first.variables.get(name)
    itemsize = described.dtype.itemsize if described is not None else var.dtype.itemsize
    decoded_itemsize = var.dtype.itemsize if var.dtype.kind != "O" else 8
    disk = described.chunks if described is not None else None
    concat_axis = var.dims.index(stack.concat_dim) if stack.concat_dim in var.dims else None
    file_lengths: tuple[int, ...] = ()
    if disk is not None and described is not None and described.dims != var.dims:
        disk = (1, *disk)  # repeated along the stack: one "chunk" per file
    if concat_axis is not None:
        file_lengths = stack.file_lengths
    compression = described.compression if described is not None else None
    return Layout(
        name=name,
        dims=var.dims,
        shape=var.shape,
        itemsize=max(1, itemsize),
        decoded_itemsize=max(1, decoded_itemsize),
        disk_chunks=tuple(disk) if disk is not None and len(disk) == var.ndim else None,
        concat_axis=concat_axis,
        file_lengths=file_lengths,
        compression=compression,
    )


def _chunk_request(chunks: Any, layout: Layout) -> Mapping[str, Any] | str:
    """One variable's share of a dataset-wide chunk request. ``{}`` means the on-disk
    chunks (as in xarray); dimensions a variable lacks are ignored."""
    if chunks == "auto":
        return "auto"
    if isinstance(chunks, int):
        return dict.fromkeys(layout.dims, chunks)
    if isinstance(chunks, Mapping):
        if not chunks:
            return {d: layout.tile(a) for a, d in enumerate(layout.dims)}
        return {d: c for d, c in chunks.items() if d in layout.dims}
    raise TypeError(f"chunks must be a mapping, an int or 'auto', not {chunks!r}")


def plan_dataset(
    stack: Stack,
    ds: Dataset,
    chunks: Any,
    *,
    max_mem: int | str | None = None,
    strategy: str = "auto",
    threshold: float = DEFAULT_AMPLIFICATION_THRESHOLD,
) -> Plan:
    """Plan every variable that will be chunked (all but indexes)."""
    max_mem = default_max_mem() if max_mem is None else memory_bytes(max_mem)
    if not threshold >= 1:
        raise ValueError(
            f"amplification_threshold={threshold!r}: it is a ratio of bytes decoded to bytes "
            "needed, so at least 1 (1 reads only whole on-disk chunks; default "
            f"{DEFAULT_AMPLIFICATION_THRESHOLD})"
        )
    distributed = _active_client() is not None
    min_tasks = 2 * _total_threads()
    target_bytes = parse_bytes(dask.config.get("array.chunk-size"))
    if isinstance(chunks, Mapping):
        unknown = set(chunks) - set(ds.dims)
        if unknown:
            raise ValueError(
                f"chunks name dimensions {sorted(unknown)} that the dataset does not have; "
                f"its dimensions are {list(ds.dims)}"
            )
    plans: dict[str, VariablePlan] = {}
    for name, var in ds.variables.items():
        if name in ds.indexes or var.dims == (name,) or var.ndim == 0:
            continue
        layout = layout_of(stack, ds, name)
        request = _chunk_request(chunks, layout)
        plans[name] = plan_variable(
            layout,
            request,
            max_mem=max_mem,
            strategy=strategy,
            threshold=threshold,
            distributed=distributed,
            min_tasks=min_tasks,
            target_bytes=target_bytes,
        )
    return Plan(plans, len(stack.descriptions), max_mem, threshold)


def _warn_budget(plan: Plan) -> None:
    """Warn for each variable whose tasks need more than ``max_mem`` (asked for
    explicitly, with chunks asked for explicitly: "auto" fits them or refuses)."""
    for v in plan.variables.values():
        if v.memory_per_task > plan.max_mem:
            warnings.warn(
                f"{v.name}: a task of the chunks {v.chunk_sizes()} holds "
                f"{format_bytes(v.memory_per_task)}, more than max_mem="
                f"{format_bytes(plan.max_mem)}; ask for smaller chunks, or chunks='auto' "
                "to have them chosen within max_mem",
                MemoryBudgetWarning,
                stacklevel=3,
            )


def _warn_amplification(plan: Plan) -> None:
    for v in plan.variables.values():
        if v.suggestion:
            warnings.warn(
                f"{v.name}: the requested chunks {v.chunk_sizes()} cut its on-disk chunks: "
                f"reading them directly decodes {v.requested_amplification:.2f}x the bytes "
                f"needed ({format_bytes(v.bytes_needed * v.requested_amplification)} for "
                f"{format_bytes(v.bytes_needed)}). Aligned chunks: {v.suggestion}. "
                + (
                    f"Reading on-disk-aligned chunks {v.read_chunk_request()} and rechunking."
                    if v.strategy == "rechunk"
                    else "Reading directly as asked (strategy='direct')."
                ),
                AmplificationWarning,
                stacklevel=3,
            )


def apply_plan(ds: Dataset, plan: Plan) -> Dataset:
    """Chunk each planned variable as its plan says.

    A rechunk moves the values as stored when decoding makes them wider (packed
    integers decoded to floats, the common case), and decodes each output chunk after
    it: half the memory the rechunk holds and half the bytes P2P sends for uint16 to
    float32, and bitwise the same values.
    """
    out = ds.copy()
    for name, v in plan.variables.items():
        var = ds.variables[name]
        read = dict(zip(v.dims, v.read_chunks, strict=True))
        if v.strategy == "rechunk":
            chunked = _rechunked(var, read, dict(zip(v.dims, v.chunks, strict=True)), v)
        else:
            chunked = var.chunk(read)
        if name in out.coords:
            out = out.assign_coords({name: chunked})
        else:
            out[name] = chunked
    out.encoding = dict(ds.encoding, xrdist_plan=plan)
    return out


def _rechunked(
    var: Variable, read: dict[str, int], chunks: dict[str, Any], plan: VariablePlan
) -> Variable:
    """``var`` read in ``read`` chunks and rechunked to ``chunks`` (plan's method); as
    stored and decoded after the rechunk when decoding widens the values."""
    found = stored_and_decoding(var._data)  # the lazy array xarray's Variable wraps
    with dask.config.set({"array.rechunk.method": plan.rechunk_method}):
        if found is None or found[0].array.dtype.itemsize >= var.dtype.itemsize:
            return var.chunk(read).chunk(chunks)
        data, functions = found
        moved = Variable(var.dims, data).chunk(read).chunk(chunks).data
    decoded = moved.map_blocks(
        decode_block, functions, var.dtype, dtype=var.dtype, name=f"decode-{moved.name}"
    )
    return Variable(var.dims, decoded, var.attrs, var.encoding)


# -- the public functions ---------------------------------------------------------------


def open_mfdataset(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    chunks: Any = None,
    concat_dim: str | None = None,
    combine: str = "by_coords",
    data_vars: str = "all",
    parallel: bool = True,
    max_mem: int | str | None = None,
    strategy: str = "auto",
    amplification_threshold: float = DEFAULT_AMPLIFICATION_THRESHOLD,
    library: str = DEFAULT_LIBRARY,
    group: str | None = None,
    times: TimesSpec | None = None,
    bands: str | None = None,
    band_dim: bool = False,
    overview_level: int | None = None,
    mask_and_scale: bool = True,
    decode_times: Any = True,
    concat_characters: bool = True,
    decode_coords: Any = True,
    drop_variables: str | Iterable[str] | None = None,
    use_cftime: bool | None = None,
    decode_timedelta: Any = None,
) -> Dataset:
    r"""Open many files as one dataset, each output chunk read straight from the files.

    Parameters
    ----------
    paths : str, path or sequence of them
        A glob pattern (matches sorted) or the files.
    chunks : mapping, int, "auto" or None
        Output chunks, e.g. ``{"time": -1, "y": 512, "x": 512}`` (``-1``: whole). ``"auto"``
        lets the planner choose (the concatenation dimension whole, others whole
        multiples of the on-disk chunks within ``max_mem``). ``None``: lazy, no dask.
    concat_dim, combine : str
        As in ``xr.open_mfdataset``: ``combine="by_coords"`` (default) orders the files by
        the coordinate that differs between them; ``"nested"`` keeps the given order and
        needs ``concat_dim``.
    data_vars : {"all", "minimal"}
        Whether data variables without ``concat_dim`` are repeated along it (xarray's
        default, "all") or taken from the first file.
    parallel : bool
        Describe the files in threads, or on the workers of the active distributed client.
    max_mem : int or str, optional
        Memory budget per task: bytes, or a string such as ``"2GiB"`` (default: a quarter
        of the memory per thread, at most 1 GiB).
    strategy : {"auto", "direct", "rechunk"}
        ``"auto"`` reads each output chunk directly unless that decodes more than
        ``amplification_threshold`` times the bytes needed; then it reads on-disk-aligned
        chunks and rechunks (P2P on a distributed cluster).
    times : str, sequence or callable, optional
        For files without ``concat_dim`` (one scene per file, e.g. GeoTIFFs): where each
        file's time comes from: a ``strptime`` format found in the file name
        (``"%Y%m%d"``), a regular expression whose first group is the date, ``"tag"``
        (the TIFF DateTime tag; the default for TIFFs that all have one), a list with one
        time per file, or a function of the path. ``concat_dim`` defaults to ``"time"``.
    bands : str, optional
        A regular expression whose first group is the band in each file name
        (``r"_(B\d\d)\.tif$"``), for one file per band and date. The bands become one
        variable each, or with ``band_dim=True`` a ``band`` dimension labelled by name
        (needs ``chunks``). Every band must have the same times and grid.
    overview_level : int, optional
        TIFF only: read an overview (0 is the first, largest) instead of full resolution.
    library, group, mask_and_scale, decode_times, ... :
        As for ``xr.open_dataset(..., engine="xrdist")``.

    Returns
    -------
    xarray.Dataset
        With ``chunks``, ``ds.encoding["xrdist_plan"]`` holds the :class:`~xrdist.plan.Plan`.
    """
    decode = {
        "mask_and_scale": mask_and_scale,
        "decode_times": decode_times,
        "concat_characters": concat_characters,
        "decode_coords": decode_coords,
        "drop_variables": drop_variables,
        "use_cftime": use_cftime,
        "decode_timedelta": decode_timedelta,
    }
    if overview_level is not None:
        from xrdist.formats.tifflib import overview_group

        group = overview_group(overview_level)
    if bands is not None:
        options = {
            "chunks": chunks,
            "concat_dim": concat_dim,
            "combine": combine,
            "data_vars": data_vars,
            "parallel": parallel,
            "max_mem": max_mem,
            "strategy": strategy,
            "amplification_threshold": amplification_threshold,
            "library": library,
            "group": group,
            "times": times,
        }
        return _open_band_files(paths, bands, band_dim, options, decode)
    stack = scan(
        paths,
        library=library,
        group=group,
        concat_dim=concat_dim,
        combine=combine,
        parallel=parallel,
        decode=decode,
        data_vars=data_vars,
        times=times,
    )
    ds = stack_dataset(stack, data_vars=data_vars, **decode)
    if chunks is None:
        return ds
    plan = plan_dataset(
        stack, ds, chunks, max_mem=max_mem, strategy=strategy, threshold=amplification_threshold
    )
    _warn_amplification(plan)
    if max_mem is not None and not isinstance(chunks, str):
        _warn_budget(plan)
    return apply_plan(ds, plan)


def _open_band_files(
    paths: Any,
    bands: str,
    band_dim: bool,
    options: dict[str, Any],
    decode: dict[str, Any],
) -> Dataset:
    """One file per band and date: each band's files as a stack, then the bands joined
    as variables (or along ``band``) after checking they share times and grid."""
    by_band: dict[str, list[str]] = {}
    for path in expand_paths(paths):
        by_band.setdefault(band_of(path, bands), []).append(path)
    if band_dim and options["chunks"] is None:
        raise ValueError("band_dim=True joins the bands as dask arrays: pass chunks= too")
    parts = {name: open_mfdataset(files, **options, **decode) for name, files in by_band.items()}
    (first_name, first), *others = parts.items()
    dim = options["concat_dim"] or "time"
    for name, part in others:
        _check_same_labels(first_name, first, name, part, by_band, dim)
    arrays = {}
    for name, part in parts.items():
        array = part["band_data"]
        arrays[name] = array.isel(band=0, drop=True) if array.sizes["band"] == 1 else array
    if band_dim:
        import xarray as xr

        out = xr.concat(list(arrays.values()), dim="band").assign_coords(band=list(arrays))
        out = out.to_dataset(name="band_data")
    else:
        out = Dataset(arrays)
    out.encoding = dict(first.encoding)
    if options["chunks"] is not None:
        out.encoding["xrdist_plan"] = {n: p.encoding["xrdist_plan"] for n, p in parts.items()}
    return out


def _check_same_labels(
    first_name: str,
    first: Dataset,
    name: str,
    part: Dataset,
    files: Mapping[str, list[str]],
    dim: str,
) -> None:
    """Raise naming the band and a file if two bands differ in times or grid."""
    for coord in (dim, "y", "x"):
        if coord not in first.coords:
            continue
        a, b = first[coord].values, part[coord].values
        if a.shape == b.shape and (a == b).all():
            continue
        what = "times" if coord == dim else f"{coord} coordinates (grid)"
        missing = sorted(set(a) ^ set(b))[:3] if coord == dim else []
        shown = ", ".join(str(v)[:19] for v in missing)  # datetime64 as dates, not ns
        detail = f" (e.g. {shown} in one but not the other)" if missing else ""
        raise StackError(
            f"band {name!r} (files like {files[name][0]!r}) and band {first_name!r} (files "
            f"like {files[first_name][0]!r}) have different {what}{detail}; every band "
            "needs the same dates and grid (resample bands of other resolutions first)"
        )


def plan(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    chunks: Any = "auto",
    concat_dim: str | None = None,
    combine: str = "by_coords",
    data_vars: str = "all",
    max_mem: int | str | None = None,
    strategy: str = "auto",
    amplification_threshold: float = DEFAULT_AMPLIFICATION_THRESHOLD,
    library: str = DEFAULT_LIBRARY,
    group: str | None = None,
    times: TimesSpec | None = None,
) -> Plan:
    """The read plan ``open_mfdataset`` would follow for ``chunks``: the files are scanned
    (described, through the cache) but no data is read."""
    stack = scan(
        paths,
        library=library,
        group=group,
        concat_dim=concat_dim,
        combine=combine,
        data_vars=data_vars,
        times=times,
    )
    ds = stack_dataset(stack, data_vars=data_vars)
    return plan_dataset(
        stack, ds, chunks, max_mem=max_mem, strategy=strategy, threshold=amplification_threshold
    )
