"""Planning reads of a stack of files: pure functions over shapes, chunks and budgets.

Nothing here opens a file or imports dask. Given what is known of one variable (its
:class:`Layout`: shape of the whole stack, on-disk chunk shape, item size, the lengths of
the files along the concatenation axis) and the chunks a user asks for, the planner
computes

* the **read amplification**: bytes decoded / bytes needed. A box of output touches the
  on-disk chunks that cover it; along the concatenation axis the chunk grid restarts at
  every file. Because the chunks a box touches are the product of the chunks touched on
  each axis, the total over all output chunks factorises into a product of per-axis
  sums, so planning costs time proportional to the number of chunks along each axis,
  not to files x chunks;
* the **memory per task**: the output chunk (raw and decoded) plus one decode buffer;
* a **strategy**: read each output chunk directly from the files when amplification is
  at most ``threshold``; otherwise read chunks aligned to the on-disk chunks and rechunk
  (with dask's P2P rechunk on a distributed cluster, in tasks otherwise);
* **automatic chunks**: the concatenation axis whole, the other axes whole multiples of
  the on-disk chunks, as large as ``max_mem`` allows while leaving enough tasks.

Notes
-----
Everything here is pure and thread-safe; :class:`Layout`, :class:`VariablePlan` and
:class:`Plan` are frozen and picklable.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Amplification above which ``strategy="auto"`` reads aligned chunks and rechunks.
DEFAULT_AMPLIFICATION_THRESHOLD = 1.5

#: Base tile of an axis stored contiguously (any window of it is read exactly).
CONTIGUOUS_TILE = 256

ChunkSpec = int | None | Sequence[int]
NormalizedChunks = tuple[tuple[int, ...], ...]


class AmplificationWarning(UserWarning):
    """Requested chunks cut the on-disk chunks badly: much more is decoded than needed."""


class MemoryBudgetWarning(UserWarning):
    """A task of the requested chunks needs more memory than the ``max_mem`` given."""


class PlanError(ValueError):
    """The requested chunks or budget cannot be planned (the message has the numbers)."""


@dataclass(frozen=True)
class Layout:
    """What the planner knows about one variable of a stack of files.

    ``disk_chunks`` is the on-disk chunk shape within each file (``None``: contiguous,
    read exactly). ``concat_axis`` is the axis along which files follow each other, and
    ``file_lengths`` their lengths along it (summing to ``shape[concat_axis]``).
    ``itemsize`` is the stored size of an element, ``decoded_itemsize`` its size once
    decoded (e.g. 2 for int16 packed data that decodes to 4-byte floats).
    """

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    itemsize: int
    decoded_itemsize: int
    disk_chunks: tuple[int, ...] | None = None
    concat_axis: int | None = None
    file_lengths: tuple[int, ...] = ()
    compression: str | None = None

    def __post_init__(self) -> None:
        if len(self.dims) != len(self.shape):
            raise PlanError(f"{self.name}: dims {self.dims} do not match shape {self.shape}")
        if self.disk_chunks is not None and len(self.disk_chunks) != len(self.shape):
            raise PlanError(
                f"{self.name}: disk chunks {self.disk_chunks} do not match shape {self.shape}"
            )
        if self.concat_axis is not None and not 0 <= self.concat_axis < len(self.shape):
            raise PlanError(
                f"{self.name}: concat_axis {self.concat_axis} is not an axis of its "
                f"{len(self.shape)} dimensions"
            )
        if self.concat_axis is not None and sum(self.file_lengths) != self.shape[self.concat_axis]:
            raise PlanError(
                f"{self.name}: file lengths sum to {sum(self.file_lengths)}, but the "
                f"{self.dims[self.concat_axis]!r} axis has {self.shape[self.concat_axis]}"
            )

    def tile(self, axis: int) -> int:
        """The on-disk chunk length along ``axis`` (a nominal tile if contiguous)."""
        if self.disk_chunks is None:
            return max(1, min(self.shape[axis], CONTIGUOUS_TILE))
        return max(1, self.disk_chunks[axis])

    @property
    def n_files(self) -> int:
        return len(self.file_lengths) if self.concat_axis is not None else 1


# -- chunks -----------------------------------------------------------------------------


def normalize_chunks(layout: Layout, chunks: Mapping[str, ChunkSpec]) -> NormalizedChunks:
    """Per-axis chunk lengths for a ``{dim: spec}`` request.

    A spec is a positive length (regular chunks), ``-1`` or ``None`` (the whole axis), or
    explicit lengths summing to the axis. Dimensions not named are whole.
    """
    unknown = set(chunks) - set(layout.dims)
    if unknown:
        raise PlanError(
            f"{layout.name}: chunks name dimensions {sorted(unknown)} that it does not "
            f"have; its dimensions are {list(layout.dims)}"
        )
    out = []
    for dim, n in zip(layout.dims, layout.shape, strict=True):
        spec = chunks.get(dim)
        if n == 0:
            out.append((0,))
        elif spec is None or (isinstance(spec, int) and spec == -1):
            out.append((n,))
        elif isinstance(spec, int):
            if spec <= 0:
                raise PlanError(f"{layout.name}: chunk length for {dim!r} must be > 0: {spec}")
            full, rest = divmod(n, spec)
            out.append((spec,) * full + ((rest,) if rest else ()))
        else:
            lengths = tuple(int(c) for c in spec)
            if sum(lengths) != n or any(c <= 0 for c in lengths):
                raise PlanError(
                    f"{layout.name}: chunks {lengths} for {dim!r} must be positive and "
                    f"sum to its length {n}"
                )
            out.append(lengths)
    return tuple(out)


def chunk_ranges(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of consecutive chunks of the given lengths."""
    ranges, start = [], 0
    for length in lengths:
        ranges.append((start, start + length))
        start += length
    return ranges


def _covered(start: int, stop: int, origin: int, end: int, tile: int) -> int:
    """Length decoded to read [start, stop) on a grid of ``tile`` starting at ``origin``
    and ending at ``end`` (exclusive)."""
    if stop <= start:
        return 0
    first = origin + (start - origin) // tile * tile
    last = min(end, origin + ((stop - 1 - origin) // tile + 1) * tile)
    return last - first


def file_bounds(layout: Layout) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of each file along the concatenation axis."""
    return chunk_ranges(layout.file_lengths)


def decoded_length(layout: Layout, axis: int, start: int, stop: int) -> int:
    """Elements decoded along ``axis`` to read [start, stop) of it."""
    tile = layout.tile(axis) if layout.disk_chunks is not None else 1
    if axis != layout.concat_axis:
        return _covered(start, stop, 0, layout.shape[axis], tile)
    total = 0
    for f0, f1 in file_bounds(layout):
        lo, hi = max(start, f0), min(stop, f1)
        if lo < hi:
            total += _covered(lo, hi, f0, f1, min(tile, f1 - f0))
    return total


def read_amplification(layout: Layout, chunks: NormalizedChunks) -> float:
    """Bytes decoded / bytes needed to read every chunk of ``chunks`` once."""
    ratio = 1.0
    for axis, lengths in enumerate(chunks):
        n = layout.shape[axis]
        if n == 0:
            return 1.0
        decoded = sum(decoded_length(layout, axis, a, b) for a, b in chunk_ranges(lengths))
        ratio *= decoded / n
    return ratio


def files_spanned(layout: Layout, start: int, stop: int) -> int:
    """How many files hold part of [start, stop) of the concatenation axis."""
    return sum(1 for f0, f1 in file_bounds(layout) if max(start, f0) < min(stop, f1))


def task_memory(layout: Layout, chunks: NormalizedChunks) -> int:
    """Peak bytes of the largest task: its output chunk, raw and decoded, plus one
    on-disk chunk being decoded."""
    largest = math.prod(max(lengths) for lengths in chunks) if chunks else 1
    buffer = math.prod(layout.tile(a) for a in range(len(layout.shape))) * layout.itemsize
    return largest * (layout.itemsize + layout.decoded_itemsize) + buffer


def decoded_bytes(layout: Layout, chunks: NormalizedChunks) -> int:
    """Bytes of the largest chunk, decoded."""
    return math.prod(max(lengths) for lengths in chunks) * layout.decoded_itemsize


def n_chunks(chunks: NormalizedChunks) -> int:
    return math.prod(len(lengths) for lengths in chunks)


def aligned_chunks(layout: Layout, chunks: NormalizedChunks) -> dict[str, Any]:
    """The request rounded to whole multiples of the on-disk chunks; the concatenation
    axis (and any axis stored contiguously) is kept exactly as asked."""
    out: dict[str, Any] = {}
    for axis, dim in enumerate(layout.dims):
        lengths = chunks[axis]
        if axis == layout.concat_axis or layout.disk_chunks is None or not lengths:
            out[dim] = (
                -1
                if len(lengths) <= 1
                else (
                    lengths[0]
                    if len(set(lengths[:-1])) == 1 and lengths[-1] <= lengths[0]
                    else tuple(lengths)
                )
            )
            continue
        tile = layout.tile(axis)
        multiple = max(1, round(max(lengths) / tile)) * tile
        out[dim] = -1 if multiple >= layout.shape[axis] else multiple
    return out


def auto_chunks(
    layout: Layout, max_mem: int, min_tasks: int = 1, target_bytes: int | None = None
) -> dict[str, int]:
    """The concatenation axis whole; other axes whole multiples of the on-disk chunks,
    grown (smallest first) while a task fits in ``max_mem``, at least ``min_tasks`` tasks
    remain and a decoded chunk stays within ``target_bytes`` (dask's ``array.chunk-size``
    in :func:`xrdist.plan`). With a target, a stack twice as long gets chunks half as
    large, so the memory of a computation does not grow with the number of files.
    Raises :class:`PlanError` if even one on-disk chunk per axis does not fit."""
    lengths = {}
    for axis, dim in enumerate(layout.dims):
        lengths[dim] = layout.shape[axis] if axis == layout.concat_axis else layout.tile(axis)

    def as_chunks(spec: Mapping[str, int]) -> NormalizedChunks:
        return normalize_chunks(layout, {d: max(1, v) for d, v in spec.items()})

    if task_memory(layout, as_chunks(lengths)) > max_mem:
        need = task_memory(layout, as_chunks(lengths))
        raise PlanError(
            f"{layout.name}: one on-disk chunk per axis with {layout.dims[layout.concat_axis]!r}"
            f" whole needs {format_bytes(need)} per task > max_mem {format_bytes(max_mem)}; "
            "raise max_mem or do not ask for the whole concatenation axis"
            if layout.concat_axis is not None
            else f"{layout.name}: one on-disk chunk needs {format_bytes(need)} per task > "
            f"max_mem {format_bytes(max_mem)}; raise max_mem"
        )
    growable = [
        axis
        for axis in range(len(layout.dims))
        if axis != layout.concat_axis and layout.shape[axis] > 0
    ]
    while True:
        candidates = [a for a in growable if lengths[layout.dims[a]] < layout.shape[a]]
        candidates.sort(key=lambda a: lengths[layout.dims[a]] / layout.tile(a))
        for axis in candidates:
            dim = layout.dims[axis]
            trial = dict(lengths)
            trial[dim] = min(layout.shape[axis], lengths[dim] * 2)
            chunks = as_chunks(trial)
            small = target_bytes is None or decoded_bytes(layout, chunks) <= target_bytes
            if small and task_memory(layout, chunks) <= max_mem and n_chunks(chunks) >= min_tasks:
                lengths = trial
                break
        else:
            break
    return {
        dim: (-1 if lengths[dim] >= layout.shape[axis] else lengths[dim])
        for axis, dim in enumerate(layout.dims)
    }


def _fit_concat_axis(
    layout: Layout, chunks: NormalizedChunks, max_mem: int, min_tasks: int = 1
) -> NormalizedChunks:
    """``chunks`` with the concatenation axis cut into whole on-disk chunks (within files)
    until a task fits in ``max_mem`` and there are at least ``min_tasks`` read tasks, so
    that an aligned read keeps every thread busy (the other axes unchanged)."""
    axis = layout.concat_axis
    if axis is None or layout.shape[axis] == 0:
        return chunks
    fits = task_memory(layout, chunks) <= max_mem
    if fits and n_chunks(chunks) >= min_tasks:
        return chunks
    tile = layout.tile(axis)
    per_step = task_memory(layout, (*chunks[:axis], (1,), *chunks[axis + 1 :]))
    steps = max(tile, (max_mem // max(1, per_step)) // tile * tile)
    others = max(1, n_chunks(chunks) // len(chunks[axis]))
    wanted = -(-min_tasks // others)  # pieces along the axis for enough tasks
    steps = min(steps, max(tile, layout.shape[axis] // wanted // tile * tile))
    cut = normalize_chunks(layout, {layout.dims[axis]: steps})[axis]
    return (*chunks[:axis], cut, *chunks[axis + 1 :])


def _fit_other_axes(layout: Layout, chunks: NormalizedChunks, max_mem: int) -> NormalizedChunks:
    """Aligned ``chunks`` with the axes other than the concatenation axis cut to fewer
    whole on-disk chunks, largest first, until a task fits in ``max_mem`` (or each is one
    on-disk chunk): a suggestion that keeps the concatenation axis as asked."""
    out = list(chunks)
    while task_memory(layout, tuple(out)) > max_mem:
        axes = [
            a
            for a in range(len(out))
            if a != layout.concat_axis and layout.disk_chunks is not None and out[a]
            if max(out[a]) > layout.tile(a)
        ]
        if not axes:
            break
        axis = max(axes, key=lambda a: max(out[a]) * 1.0 / layout.tile(a))
        tile = layout.tile(axis)
        smaller = max(tile, (max(out[axis]) // 2) // tile * tile)
        out[axis] = normalize_chunks(layout, {layout.dims[axis]: smaller})[axis]
    return tuple(out)


def _as_request(dims: tuple[str, ...], chunks: NormalizedChunks) -> dict[str, Any]:
    """Normalized chunks as a user writes them: -1 for a whole axis, one length when
    all but the last chunk have it, else the tuple."""
    out: dict[str, Any] = {}
    for dim, lengths in zip(dims, chunks, strict=True):
        if len(lengths) <= 1:
            out[dim] = -1
        elif len(set(lengths[:-1])) == 1 and lengths[-1] <= lengths[0]:
            out[dim] = lengths[0]
        else:
            out[dim] = tuple(lengths)
    return out


# -- plans ------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariablePlan:
    """How one variable will be read, and what it costs."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: NormalizedChunks
    read_chunks: NormalizedChunks
    strategy: str  # "direct" or "rechunk"
    rechunk_method: str | None  # "p2p", "tasks" or None
    reason: str
    amplification: float  # of the reads that will run
    requested_amplification: float  # of reading the requested chunks directly
    bytes_needed: int
    memory_per_task: int
    max_files_per_task: int
    suggestion: dict[str, int] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        """Read tasks (one per read chunk); a rechunk adds its own."""
        return n_chunks(self.read_chunks)

    @property
    def bytes_decoded(self) -> int:
        return round(self.bytes_needed * self.amplification)

    def chunk_sizes(self) -> dict[str, int]:
        """The largest output chunk length per dimension."""
        return {d: max(c) for d, c in zip(self.dims, self.chunks, strict=True)}

    def read_chunk_request(self) -> dict[str, Any]:
        """The read chunks as a ``chunks=`` request (-1 for a whole axis)."""
        return _as_request(self.dims, self.read_chunks)


def plan_variable(
    layout: Layout,
    chunks: Mapping[str, ChunkSpec] | str,
    *,
    max_mem: int,
    strategy: str = "auto",
    threshold: float = DEFAULT_AMPLIFICATION_THRESHOLD,
    distributed: bool = False,
    min_tasks: int = 1,
    target_bytes: int | None = None,
) -> VariablePlan:
    """Plan one variable: chunks (or ``"auto"``, see :func:`auto_chunks`), strategy and
    costs. Pure."""
    if strategy not in ("auto", "direct", "rechunk"):
        raise PlanError(f"strategy must be 'auto', 'direct' or 'rechunk', not {strategy!r}")
    if chunks == "auto":
        chunks = auto_chunks(layout, max_mem, min_tasks, target_bytes)
    elif isinstance(chunks, str):
        raise PlanError(
            f"chunks must be a mapping of dimension to length or 'auto', not {chunks!r}"
        )
    target = normalize_chunks(layout, chunks)
    requested = read_amplification(layout, target)
    needed = math.prod(layout.shape) * layout.decoded_itemsize
    aligned = normalize_chunks(layout, aligned_chunks(layout, target))
    aligned_amp = read_amplification(layout, aligned)
    suggestion = _as_request(layout.dims, _fit_other_axes(layout, aligned, max_mem))
    wasteful = requested > threshold and aligned_amp < requested
    if strategy == "direct" or (strategy == "auto" and not wasteful):
        read, chosen, method = target, "direct", None
        if strategy == "direct":
            reason = f"direct read requested (amplification {requested:.2f})"
        elif requested <= threshold:
            reason = (
                f"amplification {requested:.2f} <= {threshold:g}: each task reads its window "
                "straight from the files"
            )
        else:
            reason = (
                f"amplification {requested:.2f} > {threshold:g}, but chunks aligned to the "
                f"on-disk chunks would decode as much ({aligned_amp:.2f}): reading directly"
            )
    else:
        read, chosen = _fit_concat_axis(layout, aligned, max_mem, min_tasks), "rechunk"
        method = "p2p" if distributed else "tasks"
        how = "dask P2P (distributed client)" if distributed else "tasks"
        why = (
            f"amplification {requested:.2f} > {threshold:g} for the requested chunks"
            if requested > threshold
            else f"rechunk requested (amplification {requested:.2f})"
        )
        reason = (
            f"{why}: read on-disk-aligned chunks {_as_request(layout.dims, read)} (amplification "
            f"{aligned_amp:.2f}) and rechunk with {how}"
        )
    amp = read_amplification(layout, read)
    max_files = (
        max(files_spanned(layout, a, b) for a, b in chunk_ranges(read[layout.concat_axis]))
        if layout.concat_axis is not None and layout.shape[layout.concat_axis] > 0
        else 1
    )
    return VariablePlan(
        name=layout.name,
        dims=layout.dims,
        shape=layout.shape,
        chunks=target,
        read_chunks=read,
        strategy=chosen,
        rechunk_method=method,
        reason=reason,
        amplification=amp,
        requested_amplification=requested,
        bytes_needed=needed,
        memory_per_task=max(task_memory(layout, read), task_memory(layout, target)),
        max_files_per_task=max_files,
        suggestion=suggestion if requested > threshold else {},
    )


@dataclass(frozen=True)
class Plan:
    """The read plan of a stack: one :class:`~xrdist.plan.VariablePlan` per planned variable."""

    variables: dict[str, VariablePlan]
    n_files: int
    max_mem: int
    threshold: float

    @property
    def tasks(self) -> int:
        return sum(v.tasks for v in self.variables.values())

    @property
    def bytes_needed(self) -> int:
        return sum(v.bytes_needed for v in self.variables.values())

    @property
    def bytes_decoded(self) -> int:
        return sum(v.bytes_decoded for v in self.variables.values())

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "variable": v.name,
                "strategy": v.strategy + (f" ({v.rechunk_method})" if v.rechunk_method else ""),
                "chunks": ", ".join(f"{d}: {c}" for d, c in v.chunk_sizes().items()),
                "tasks": v.tasks,
                "amplification": f"{v.amplification:.2f}",
                "memory/task": format_bytes(v.memory_per_task),
                "files/task": v.max_files_per_task,
                "why": v.reason,
            }
            for v in self.variables.values()
        ]

    def __repr__(self) -> str:
        head = (
            f"<xrdist.Plan: {_count(self.n_files, 'file')}, "
            f"{_count(len(self.variables), 'variable')}, {_count(self.tasks, 'read task')}, "
            f"{format_bytes(self.bytes_decoded)} decoded for "
            f"{format_bytes(self.bytes_needed)} needed, max_mem {format_bytes(self.max_mem)}>"
        )
        lines = [head]
        for row in self.rows():
            lines.append(
                f"  {row['variable']}: {row['strategy']}, chunks {{{row['chunks']}}}, "
                f"{_count(row['tasks'], 'task')}, amplification {row['amplification']}, "
                f"{row['memory/task']}/task, {_count(row['files/task'], 'file')}/task\n"
                f"    why: {row['why']}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = self.rows()
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0]) if rows else ""
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
            for row in rows
        )
        title = html.escape(repr(self).splitlines()[0])
        return f"<div><p>{title}</p><table><tr>{head}</tr>{body}</table></div>"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover
