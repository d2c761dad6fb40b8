"""The read planner (xrdist.plan): tables of known cases, and properties against brute force.

In the style of rechunker's planner tests: every planning function gets a parametrised
table with a one-line comment per case, and the arithmetic is checked by hypothesis
against an oracle that enumerates every output chunk and every on-disk chunk it touches.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import math
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrdist.plan import (
    DEFAULT_AMPLIFICATION_THRESHOLD,
    Layout,
    Plan,
    PlanError,
    VariablePlan,
    aligned_chunks,
    auto_chunks,
    chunk_ranges,
    decoded_bytes,
    decoded_length,
    files_spanned,
    format_bytes,
    n_chunks,
    normalize_chunks,
    plan_variable,
    read_amplification,
    task_memory,
)

FAST = settings(max_examples=200, deadline=None)
MiB = 2**20

# -- layouts of the tables ---------------------------------------------------------------

#: 120 hourly files of a 1024 x 1024 int16 field (decoded to float32), 256 x 256 tiles.
SAT = Layout(
    "v",
    ("time", "y", "x"),
    (120, 1024, 1024),
    itemsize=2,
    decoded_itemsize=4,
    disk_chunks=(1, 256, 256),
    concat_axis=0,
    file_lengths=(1,) * 120,
)
#: Three files of unequal lengths, chunk length 2 along time: the grid restarts per file.
FILES = Layout("t", ("time",), (10,), 4, 4, disk_chunks=(2,), concat_axis=0, file_lengths=(3, 5, 2))
#: The same data as one file: a single chunk grid from 0.
FLAT = Layout("t", ("time",), (10,), 4, 4, disk_chunks=(2,))
#: One axis of 10, tiles of 4 (the last tile clipped to 2).
ONE_D = Layout("a", ("x",), (10,), 1, 1, disk_chunks=(4,))
#: FILES along time times ONE_D along x.
GRID2 = Layout(
    "g", ("time", "x"), (10, 10), 1, 1, disk_chunks=(2, 4), concat_axis=0, file_lengths=(3, 5, 2)
)
#: Files stored contiguously: any window is read exactly.
CONTIG = Layout(
    "c", ("time", "x"), (10, 1000), 4, 8, disk_chunks=None, concat_axis=0, file_lengths=(3, 5, 2)
)
#: No record yet along time.
EMPTY = Layout("e", ("time", "x"), (0, 10), 4, 4, disk_chunks=(2, 4), concat_axis=0)
#: Files of lengths 3, 3, 4 with chunk length 2 along time, x tiled by 256.
THREE = Layout(
    "w",
    ("time", "x"),
    (10, 1024),
    2,
    4,
    disk_chunks=(2, 256),
    concat_axis=0,
    file_lengths=(3, 3, 4),
)


# -- brute-force oracles -------------------------------------------------------------------


def ranges_of(lengths):
    """[(start, stop), ...] of consecutive chunks, computed without the library."""
    stops = list(itertools.accumulate(lengths))
    return list(zip([0, *stops[:-1]], stops, strict=True))


def axis_chunk_ids(layout, axis):
    """For each element of ``axis``, the on-disk chunk that holds it. On the concatenation
    axis the grid restarts in every file: a chunk is (file, local chunk index). Contiguous
    storage is read exactly: every element is its own "chunk"."""
    n = layout.shape[axis]
    if layout.disk_chunks is None:
        return list(range(n))
    d = layout.disk_chunks[axis]
    if axis != layout.concat_axis:
        return [i // d for i in range(n)]
    ids = []
    for f, length in enumerate(layout.file_lengths):
        ids += [(f, j // d) for j in range(length)]
    assert len(ids) == n
    return ids


def axis_file_ids(layout):
    """For each element of the concatenation axis, the file that holds it."""
    return [f for f, length in enumerate(layout.file_lengths) for _ in range(length)]


def oracle_amplification(layout, chunks):
    """Every output chunk box, every on-disk chunk it touches, their clipped volumes."""
    total = math.prod(layout.shape)
    if total == 0:
        return 1.0
    ids = [axis_chunk_ids(layout, a) for a in range(len(layout.shape))]

    def chunk_of(index):
        return tuple(ids[a][i] for a, i in enumerate(index))

    volume = Counter(chunk_of(idx) for idx in itertools.product(*map(range, layout.shape)))
    decoded = 0
    for box in itertools.product(*(ranges_of(lengths) for lengths in chunks)):
        touched = {chunk_of(idx) for idx in itertools.product(*(range(a, b) for a, b in box))}
        decoded += sum(volume[c] for c in touched)
    return decoded / total


def oracle_decoded_length(layout, axis, start, stop):
    ids = axis_chunk_ids(layout, axis)
    sizes = Counter(ids)
    return sum(sizes[c] for c in set(ids[start:stop]))


def oracle_files_spanned(layout, start, stop):
    return len(set(axis_file_ids(layout)[start:stop]))


# -- hypothesis strategies -----------------------------------------------------------------

DIMS = ("time", "y", "x")
OMIT = object()


@st.composite
def file_lengths(draw, n):
    """At least one file; lengths >= 0 (a few empty files) summing to ``n``."""
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=4)))
    points = [0, *cuts, n]
    return tuple(b - a for a, b in itertools.pairwise(points))


@st.composite
def positive_lengths(draw, n):
    """Explicit chunk lengths, all > 0, summing to ``n`` (> 0)."""
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=4)))) if n > 1 else []
    points = [0, *cuts, n]
    lengths = [b - a for a, b in itertools.pairwise(points)]
    return tuple(lengths) if draw(st.booleans()) else lengths


@st.composite
def layouts(draw, chunked=None, concat=None):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.integers(0, 12)) for _ in range(ndim))
    if chunked is None:
        chunked = draw(st.booleans())
    disk = tuple(draw(st.integers(1, 5)) for _ in range(ndim)) if chunked else None
    if concat is None:
        concat = draw(st.booleans())
    axis = draw(st.integers(0, ndim - 1)) if concat else None
    files = draw(file_lengths(shape[axis])) if concat else ()
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    decoded = draw(st.sampled_from([1, 2, 4, 8]))
    return Layout("v", DIMS[:ndim], shape, itemsize, decoded, disk, axis, files)


@st.composite
def requests(draw, layout):
    """A ``{dim: spec}`` request: omitted, -1, None, a length (maybe > the axis) or
    explicit lengths."""
    out = {}
    for dim, n in zip(layout.dims, layout.shape, strict=True):
        options = [st.just(OMIT), st.just(-1), st.none(), st.integers(1, 14)]
        if n > 0:
            options.append(positive_lengths(n))
        spec = draw(st.one_of(options))
        if spec is not OMIT:
            out[dim] = spec
    return out


@st.composite
def layouts_and_requests(draw, chunked=None, concat=None):
    layout = draw(layouts(chunked=chunked, concat=concat))
    return layout, draw(requests(layout))


@st.composite
def aligned_requests(draw, layout):
    """Chunks that cut no on-disk chunk: multiples of the disk chunk on the other axes,
    whole groups of files (or the whole axis) on the concatenation axis."""
    out = {}
    for axis, (dim, n) in enumerate(zip(layout.dims, layout.shape, strict=True)):
        if axis == layout.concat_axis:
            files = layout.file_lengths
            if n == 0 or draw(st.booleans()):
                out[dim] = -1
                continue
            cuts = sorted(set(draw(st.lists(st.integers(1, len(files)), max_size=4))))
            points = [0, *cuts] if cuts and cuts[-1] == len(files) else [0, *cuts, len(files)]
            groups = [sum(files[a:b]) for a, b in itertools.pairwise(points)]
            out[dim] = tuple(g for g in groups if g > 0)
        else:
            k = draw(st.sampled_from([-1, 1, 2, 3]))
            out[dim] = -1 if k == -1 else k * layout.disk_chunks[axis]
    return out


def assert_partition(lengths, n):
    """The chunks cover [0, n) exactly once, in order."""
    ranges = chunk_ranges(lengths)
    assert sum(lengths) == n
    assert ranges[0][0] == 0
    assert ranges[-1][1] == n
    assert all(a <= b for a, b in ranges)
    assert all(prev[1] == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    covered = Counter(i for a, b in ranges for i in range(a, b))
    assert all(covered[i] == 1 for i in range(n))
    assert sum(covered.values()) == n


# -- normalize_chunks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "chunks", "expected"),
    [
        # nothing asked: every axis whole
        (SAT, {}, ((120,), (1024,), (1024,))),
        # -1 and None both mean the whole axis
        (SAT, {"time": -1, "y": None}, ((120,), (1024,), (1024,))),
        # regular chunks dividing the axis
        (SAT, {"y": 256, "x": 512}, ((120,), (256,) * 4, (512, 512))),
        # regular chunks not dividing the axis: a shorter last chunk
        (SAT, {"y": 300}, ((120,), (300, 300, 300, 124), (1024,))),
        # a length longer than the axis is the whole axis
        (ONE_D, {"x": 20}, ((10,),)),
        # explicit lengths as a tuple are kept
        (ONE_D, {"x": (3, 7)}, ((3, 7),)),
        # explicit lengths as a list are kept (as a tuple)
        (ONE_D, {"x": [5, 2, 3]}, ((5, 2, 3),)),
        # chunk length 1 along the files
        (FILES, {"time": 1}, ((1,) * 10,)),
        # a zero-length axis has one empty chunk, whatever is asked
        (EMPTY, {"time": 4, "x": 3}, ((0,), (3, 3, 3, 1))),
    ],
)
def test_normalize_chunks(layout, chunks, expected):
    assert normalize_chunks(layout, chunks) == expected


@pytest.mark.parametrize(
    ("chunks", "words"),
    [
        # an unknown dimension: the message lists the valid ones
        ({"z": 1}, r"\['z'\].*its dimensions are \['time', 'y', 'x'\]"),
        # two unknown dimensions, sorted
        ({"b": 1, "a": 2, "y": 3}, r"\['a', 'b'\]"),
        # zero is not a chunk length
        ({"y": 0}, r"'y' must be > 0: 0"),
        # negative lengths other than -1 are refused
        ({"x": -2}, r"'x' must be > 0: -2"),
        # explicit lengths must sum to the axis
        ({"y": (512, 256)}, r"\(512, 256\) for 'y' must be positive and sum to its length 1024"),
        # explicit lengths must be positive
        ({"y": (0, 1024)}, r"\(0, 1024\) for 'y' must be positive"),
    ],
)
def test_normalize_chunks_errors_carry_the_numbers(chunks, words):
    with pytest.raises(PlanError, match=words):
        normalize_chunks(SAT, chunks)


@FAST
@given(layouts_and_requests())
def test_normalized_chunks_partition_every_axis(case):
    layout, request = case
    chunks = normalize_chunks(layout, request)
    assert len(chunks) == len(layout.shape)
    for dim, n, lengths in zip(layout.dims, layout.shape, chunks, strict=True):
        assert_partition(lengths, n)
        spec = request.get(dim)
        if n == 0:
            assert lengths == (0,)
        elif spec is None or spec == -1:
            assert lengths == (n,)
        elif isinstance(spec, int):
            assert all(c == spec for c in lengths[:-1])
            assert 0 < lengths[-1] <= spec
        else:
            assert lengths == tuple(spec)


# -- read_amplification --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "chunks", "expected"),
    [
        # satellite: time whole, chunks = tiles -> every byte decoded once
        (SAT, {"time": -1, "y": 256, "x": 256}, 1.0),
        # satellite: 300 cuts tiles -> (1792 / 1024) ** 2
        (SAT, {"y": 300, "x": 300}, 3.0625),
        # satellite: half tiles -> every tile decoded twice per axis
        (SAT, {"y": 128, "x": 128}, 4.0),
        # satellite: one time step per chunk, one file per time step -> no waste
        (SAT, {"time": 1, "y": 512, "x": -1}, 1.0),
        # contiguous: windows are read exactly
        (CONTIG, {"time": 1, "x": 7}, 1.0),
        # contiguous: odd explicit chunks too
        (CONTIG, {"time": (1, 9), "x": 333}, 1.0),
        # 1D, tiles of 4, chunks of 3: 4 + 8 + 6 + 2 decoded for 10
        (ONE_D, {"x": 3}, 2.0),
        # 1D, chunks of 8 span two tiles, the last clipped: 8 + 2
        (ONE_D, {"x": 8}, 1.0),
        # files (3, 5, 2), chunk 2, grid restarting: 1 step -> (5 + 9 + 4) / 10
        (FILES, {"time": 1}, 1.8),
        # one file, same chunks: every step decodes a whole chunk of 2
        (FLAT, {"time": 1}, 2.0),
        # files (3, 5, 2), steps of 2 straddle file and chunk edges: 2+3+4+3+2
        (FILES, {"time": 2}, 1.4),
        # steps of 2 on one file: aligned
        (FLAT, {"time": 2}, 1.0),
        # chunks = files
        (FILES, {"time": (3, 5, 2)}, 1.0),
        # chunks of 5 happen to cut files only at chunk edges
        (FILES, {"time": 5}, 1.0),
        # the whole axis
        (FILES, {"time": -1}, 1.0),
        # per-axis ratios multiply: 1.8 along time x 2.0 along x
        (GRID2, {"time": 1, "x": 3}, 3.6),
        # an empty variable costs nothing extra
        (EMPTY, {"time": 1, "x": 3}, 1.0),
    ],
)
def test_read_amplification(layout, chunks, expected):
    got = read_amplification(layout, normalize_chunks(layout, chunks))
    assert math.isclose(got, expected)
    if math.prod(layout.shape) <= 10_000:  # the oracle is cubic: small layouts only
        assert math.isclose(got, oracle_amplification(layout, normalize_chunks(layout, chunks)))


@FAST
@given(layouts_and_requests())
def test_read_amplification_matches_brute_force(case):
    layout, request = case
    chunks = normalize_chunks(layout, request)
    assert math.isclose(read_amplification(layout, chunks), oracle_amplification(layout, chunks))


@FAST
@given(layouts_and_requests(chunked=False))
def test_contiguous_layouts_are_never_amplified(case):
    layout, request = case
    assert read_amplification(layout, normalize_chunks(layout, request)) == 1.0


@FAST
@given(st.data())
def test_aligned_requests_have_amplification_exactly_one(data):
    layout = data.draw(layouts(chunked=True))
    request = data.draw(aligned_requests(layout))
    assert read_amplification(layout, normalize_chunks(layout, request)) == 1.0


@FAST
@given(st.data())
def test_decoded_length_matches_brute_force(data):
    layout = data.draw(layouts())
    axis = data.draw(st.integers(0, len(layout.shape) - 1))
    n = layout.shape[axis]
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    got = decoded_length(layout, axis, start, stop)
    # never less than asked, never more than the axis (nor outside a file)
    assert stop - start <= got <= n
    assert got == oracle_decoded_length(layout, axis, start, stop)


@FAST
@given(st.data())
def test_files_spanned_matches_brute_force(data):
    layout = data.draw(layouts(concat=True))
    n = layout.shape[layout.concat_axis]
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    assert files_spanned(layout, start, stop) == oracle_files_spanned(layout, start, stop)


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        # inside the first file
        (0, 3, 1),
        # the last step of file 0 and the first of file 1
        (2, 4, 2),
        # all three files
        (2, 9, 3),
        # an empty window spans nothing
        (4, 4, 0),
    ],
)
def test_files_spanned(start, stop, expected):
    assert files_spanned(FILES, start, stop) == expected


# -- aligned_chunks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "chunks", "expected"),
    [
        # 300 rounds to one tile of 256; time whole stays whole
        (SAT, {"y": 300, "x": 300}, {"time": -1, "y": 256, "x": 256}),
        # 128 is less than a tile: one tile
        (SAT, {"y": 128, "x": 128}, {"time": -1, "y": 256, "x": 256}),
        # 400 rounds to two tiles; the concatenation axis is kept as asked
        (SAT, {"time": 24, "y": 400, "x": 100}, {"time": 24, "y": 512, "x": 256}),
        # 900 rounds to four tiles = the whole axis
        (SAT, {"y": 900, "x": 1000}, {"time": -1, "y": -1, "x": -1}),
        # already aligned: unchanged
        (SAT, {"time": 1, "y": 256, "x": 512}, {"time": 1, "y": 256, "x": 512}),
        # contiguous: nothing to align to, kept as asked
        (CONTIG, {"time": 2, "x": 333}, {"time": 2, "x": 333}),
        # 1D, chunks of 3 -> one tile of 4
        (ONE_D, {"x": 3}, {"x": 4}),
        # a zero-length axis is whole
        (EMPTY, {"x": 3}, {"time": -1, "x": 4}),
    ],
)
def test_aligned_chunks(layout, chunks, expected):
    suggestion = aligned_chunks(layout, normalize_chunks(layout, chunks))
    assert suggestion == expected


def test_aligned_chunks_keeps_the_concat_axis_chunks_as_asked():
    # Files of 3, 3, 4 read one file per chunk: the docstring says the concatenation axis
    # is kept as asked, so the rechunk should read (3, 3, 4) along time, not (4, 4, 2).
    chunks = normalize_chunks(THREE, {"time": (3, 3, 4), "x": 300})
    suggestion = aligned_chunks(THREE, chunks)
    aligned = normalize_chunks(THREE, suggestion)
    assert aligned[0] == (3, 3, 4), f"suggestion {suggestion} reads time as {aligned[0]}"
    plan = plan_variable(THREE, {"time": (3, 3, 4), "x": 300}, max_mem=10**9)
    assert plan.strategy == "rechunk"
    assert plan.amplification == 1.0


# -- task_memory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "chunks", "expected"),
    [
        # satellite, time whole, one tile: 120*256*256*(2+4) + one 256x256 int16 tile
        (SAT, {"time": -1, "y": 256, "x": 256}, 120 * 256 * 256 * 6 + 256 * 256 * 2),
        # satellite, 300 x 300 windows (the largest chunk counts, not the 124 remainder)
        (SAT, {"y": 300, "x": 300}, 120 * 300 * 300 * 6 + 256 * 256 * 2),
        # one step per task
        (SAT, {"time": 1, "y": 1024, "x": 1024}, 1024 * 1024 * 6 + 256 * 256 * 2),
        # uneven explicit chunks: the largest, 7, counts; buffer one tile of 4
        (ONE_D, {"x": (3, 7)}, 7 * 2 + 4),
        # contiguous: the nominal tile is min(axis, 256) -> 10 x 256 x 4 bytes
        (CONTIG, {"time": 1, "x": 100}, 100 * 12 + 10 * 256 * 4),
        # an empty variable: no output, the buffer only
        (EMPTY, {}, 2 * 4 * 4),
    ],
)
def test_task_memory(layout, chunks, expected):
    assert task_memory(layout, normalize_chunks(layout, chunks)) == expected


def test_task_memory_of_a_scalar():
    scalar = Layout("s", (), (), itemsize=8, decoded_itemsize=8)
    assert task_memory(scalar, normalize_chunks(scalar, {})) == 8 + 8 + 8


# -- auto_chunks ---------------------------------------------------------------------------

ONE_TILE_SAT = 120 * 256 * 256 * 6 + 256 * 256 * 2


@pytest.mark.parametrize(
    ("layout", "max_mem", "min_tasks", "expected"),
    [
        # exactly one tile per task fits: no growth
        (SAT, ONE_TILE_SAT, 1, {"time": -1, "y": 256, "x": 256}),
        # 64 MiB: doubling y would need 90 MiB
        (SAT, 64 * MiB, 1, {"time": -1, "y": 256, "x": 256}),
        # 256 MiB: y then x double to 512; 1024 would need 720 MiB
        (SAT, 256 * MiB, 1, {"time": -1, "y": 512, "x": 512}),
        # plenty of memory: the whole variable is one task
        (SAT, 2**40, 1, {"time": -1, "y": -1, "x": -1}),
        # plenty of memory but 16 tasks wanted: stay at one tile
        (SAT, 2**40, 16, {"time": -1, "y": 256, "x": 256}),
        # 8 tasks wanted: one axis doubles
        (SAT, 2**40, 8, {"time": -1, "y": 512, "x": 256}),
        # contiguous 1D without files, nominal tile 256: 256*8 + 1024 = 3072 fits, 512 not
        (Layout("c", ("x",), (1000,), 4, 4), 5000, 1, {"x": 256}),
        # ... with 10 kB the whole axis fits (1000*8 + 1024)
        (Layout("c", ("x",), (1000,), 4, 4), 10_000, 1, {"x": -1}),
        # a zero-length concatenation axis is whole
        (EMPTY, 10**6, 1, {"time": -1, "x": -1}),
    ],
)
def test_auto_chunks(layout, max_mem, min_tasks, expected):
    got = auto_chunks(layout, max_mem, min_tasks)
    assert got == expected
    assert task_memory(layout, normalize_chunks(layout, got)) <= max_mem


@pytest.mark.parametrize("dates", [60, 120, 240, 480])
def test_auto_chunks_with_a_target_keep_memory_as_the_stack_grows(dates):
    """Twice the dates, half the area: a decoded chunk stays within the target (dask's
    array.chunk-size), so peak memory does not grow with the stack, as long as one
    on-disk tile per task is within the target."""
    layout = dataclasses.replace(SAT, shape=(dates, 1024, 1024), file_lengths=(1,) * dates)
    target = 128 * MiB
    got = normalize_chunks(layout, auto_chunks(layout, 2**40, 1, target))
    decoded = decoded_bytes(layout, got)
    assert decoded <= target
    assert decoded > target / 2  # as large as the target allows: one doubling more is over
    assert max(got[0]) == dates


@pytest.mark.parametrize(
    ("layout", "max_mem", "words"),
    [
        # satellite: one tile with 120 steps needs 45.1 MiB
        (
            SAT,
            MiB,
            r"'time' whole needs 45\.1 MiB per task > max_mem 1\.0 MiB; raise max_mem",
        ),
        # just one byte short
        (SAT, ONE_TILE_SAT - 1, r"needs 45\.1 MiB per task > max_mem 45\.1 MiB"),
        # no concatenation axis: 256*8 + 256*4 = 3072 bytes
        (Layout("c", ("x",), (1000,), 4, 4), 100, r"one on-disk chunk needs 3\.0 KiB .*100 B"),
    ],
)
def test_auto_chunks_errors_carry_the_numbers(layout, max_mem, words):
    with pytest.raises(PlanError, match=words):
        auto_chunks(layout, max_mem)


@FAST
@given(layouts(), st.integers(1, 40_000), st.integers(1, 6), st.none() | st.integers(1, 40_000))
def test_auto_chunks_properties(layout, max_mem, min_tasks, target):
    start = {
        dim: (n if axis == layout.concat_axis else max(1, layout.tile(axis)))
        for axis, (dim, n) in enumerate(zip(layout.dims, layout.shape, strict=True))
    }
    need = task_memory(layout, normalize_chunks(layout, {d: max(1, v) for d, v in start.items()}))
    try:
        got = auto_chunks(layout, max_mem, min_tasks, target)
    except PlanError as e:
        assert need > max_mem
        assert format_bytes(need) in str(e)
        assert format_bytes(max_mem) in str(e)
        return
    assert need <= max_mem
    assert set(got) == set(layout.dims)
    chunks = normalize_chunks(layout, got)
    assert task_memory(layout, chunks) <= max_mem
    for axis, (dim, n) in enumerate(zip(layout.dims, layout.shape, strict=True)):
        if axis == layout.concat_axis:
            assert got[dim] == -1
        elif got[dim] != -1:
            assert 0 < got[dim] < n
            if layout.disk_chunks is not None:
                assert got[dim] % layout.disk_chunks[axis] == 0
    start_chunks = normalize_chunks(layout, {d: max(1, v) for d, v in start.items()})
    # it grows only while enough tasks remain and chunks stay within the target
    assert chunks == start_chunks or n_chunks(chunks) >= min_tasks
    assert chunks == start_chunks or target is None or decoded_bytes(layout, chunks) <= target


# -- plan_variable -------------------------------------------------------------------------

SAT_TILES = {"time": -1, "y": 256, "x": 256}


@pytest.mark.parametrize(
    ("layout", "chunks", "kwargs", "expected"),
    [
        # satellite, tiles: direct, 16 tasks, no waste
        (
            SAT,
            SAT_TILES,
            {},
            {
                "strategy": "direct",
                "rechunk_method": None,
                "amplification": 1.0,
                "requested_amplification": 1.0,
                "tasks": 16,
                "suggestion": {},
                "reason": ["1.00 <= 1.5"],
                "max_files_per_task": 120,
            },
        ),
        # satellite, 300 x 300 on a cluster: rechunk with P2P from 256-aligned reads
        (
            SAT,
            {"y": 300, "x": 300},
            {"distributed": True},
            {
                "strategy": "rechunk",
                "rechunk_method": "p2p",
                "amplification": 1.0,
                "requested_amplification": 3.0625,
                "tasks": 16,
                "read_chunks": ((120,), (256,) * 4, (256,) * 4),
                "chunks": ((120,), (300, 300, 300, 124), (300, 300, 300, 124)),
                "suggestion": SAT_TILES,
                "reason": ["3.06 > 1.5", str(SAT_TILES), "1.00", "P2P"],
            },
        ),
        # satellite, 300 x 300 without a cluster: rechunk in tasks
        (
            SAT,
            {"y": 300, "x": 300},
            {"distributed": False},
            {
                "strategy": "rechunk",
                "rechunk_method": "tasks",
                "amplification": 1.0,
                "requested_amplification": 3.0625,
                "suggestion": SAT_TILES,
                "reason": ["3.06 > 1.5", "tasks"],
            },
        ),
        # satellite, half tiles: amplification 4 -> rechunk from whole tiles
        (
            SAT,
            {"y": 128, "x": 128},
            {},
            {
                "strategy": "rechunk",
                "rechunk_method": "tasks",
                "amplification": 1.0,
                "requested_amplification": 4.0,
                "read_chunks": ((120,), (256,) * 4, (256,) * 4),
                "suggestion": SAT_TILES,
                "reason": ["4.00 > 1.5"],
            },
        ),
        # a higher threshold tolerates 3.06: direct, no suggestion
        (
            SAT,
            {"y": 300, "x": 300},
            {"threshold": 5.0},
            {
                "strategy": "direct",
                "rechunk_method": None,
                "amplification": 3.0625,
                "suggestion": {},
                "reason": ["3.06 <= 5"],
            },
        ),
        # direct forced despite 3.06: the suggestion is still offered
        (
            SAT,
            {"y": 300, "x": 300},
            {"strategy": "direct", "distributed": True},
            {
                "strategy": "direct",
                "rechunk_method": None,
                "amplification": 3.0625,
                "tasks": 16,
                "suggestion": SAT_TILES,
                "reason": ["direct read requested", "3.06"],
            },
        ),
        # rechunk forced on aligned chunks: tasks, no suggestion
        (
            SAT,
            {"time": 1, "y": 512, "x": 512},
            {"strategy": "rechunk"},
            {
                "strategy": "rechunk",
                "rechunk_method": "tasks",
                "amplification": 1.0,
                "requested_amplification": 1.0,
                "tasks": 480,
                "suggestion": {},
                "reason": ["1.00"],
                "max_files_per_task": 1,
            },
        ),
        # rechunk forced on a cluster: P2P
        (
            SAT,
            SAT_TILES,
            {"strategy": "rechunk", "distributed": True},
            {"strategy": "rechunk", "rechunk_method": "p2p", "amplification": 1.0},
        ),
        # files (3, 5, 2), steps of 2 -> 1.4 <= 1.5: direct; chunks straddle two files
        (
            FILES,
            {"time": 2},
            {},
            {
                "strategy": "direct",
                "amplification": 1.4,
                "tasks": 5,
                "max_files_per_task": 2,
                "reason": ["1.40 <= 1.5"],
            },
        ),
        # contiguous: never amplified, direct
        (
            CONTIG,
            {"time": 1, "x": 7},
            {},
            {"strategy": "direct", "amplification": 1.0, "tasks": 1430, "suggestion": {}},
        ),
        # "auto" chunks: as auto_chunks says, direct
        (
            SAT,
            "auto",
            {"max_mem": 256 * MiB},
            {
                "strategy": "direct",
                "amplification": 1.0,
                "tasks": 4,
                "chunks": ((120,), (512, 512), (512, 512)),
            },
        ),
        # an empty variable: one empty task, nothing amplified
        (
            EMPTY,
            {"x": 3},
            {},
            {"strategy": "direct", "amplification": 1.0, "tasks": 4, "max_files_per_task": 1},
        ),
    ],
)
def test_plan_variable(layout, chunks, kwargs, expected):
    kwargs = {"max_mem": 2**40, **kwargs}
    plan = plan_variable(layout, chunks, **kwargs)
    expected = dict(expected)
    reason_parts = expected.pop("reason", [])
    for attr, value in expected.items():
        got = getattr(plan, attr)
        if isinstance(value, float):
            assert math.isclose(got, value), (attr, got, value)
        else:
            assert got == value, (attr, got, value)
    for part in reason_parts:
        assert part in plan.reason, (part, plan.reason)
    assert plan.name == layout.name
    assert plan.bytes_needed == math.prod(layout.shape) * layout.decoded_itemsize
    assert plan.memory_per_task == max(
        task_memory(layout, plan.read_chunks), task_memory(layout, plan.chunks)
    )


def test_plan_variable_satellite_costs():
    plan = plan_variable(SAT, {"y": 300, "x": 300}, max_mem=2**40, strategy="direct")
    assert plan.bytes_needed == 120 * 1024 * 1024 * 4
    assert plan.bytes_decoded == round(120 * 1024 * 1024 * 4 * 3.0625)
    assert plan.chunk_sizes() == {"time": 120, "y": 300, "x": 300}
    assert plan.memory_per_task == 120 * 300 * 300 * 6 + 256 * 256 * 2


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        # an unknown strategy lists the valid ones
        ({"chunks": SAT_TILES, "strategy": "fast"}, r"'auto', 'direct' or 'rechunk', not 'fast'"),
        # a string other than "auto"
        ({"chunks": "big"}, r"mapping of dimension to length or 'auto', not 'big'"),
        # an unknown dimension
        ({"chunks": {"lat": 10}}, r"\['lat'\].*\['time', 'y', 'x'\]"),
        # auto chunks with too little memory
        ({"chunks": "auto", "max_mem": 1000}, r"45\.1 MiB per task > max_mem 1000 B"),
    ],
)
def test_plan_variable_errors_carry_the_numbers(kwargs, words):
    kwargs = {"max_mem": 2**40, **kwargs}
    with pytest.raises(PlanError, match=words):
        plan_variable(SAT, **kwargs)


def test_forced_rechunk_reason_does_not_claim_a_false_comparison():
    # requested amplification 1.00 <= 1.5: the reason must not say "1.00 > 1.5"
    plan = plan_variable(SAT, SAT_TILES, max_mem=2**40, strategy="rechunk")
    assert plan.requested_amplification <= DEFAULT_AMPLIFICATION_THRESHOLD
    assert "1.00 > 1.5" not in plan.reason, plan.reason


def test_auto_direct_reason_does_not_say_direct_was_requested():
    # 1.8 > 1.5 but aligning cannot help along the files: direct is chosen by "auto", so
    # the reason must not say the user requested a direct read
    plan = plan_variable(FILES, {"time": 1}, max_mem=2**40)
    assert plan.strategy == "direct"
    assert math.isclose(plan.requested_amplification, 1.8)
    assert "1.80" in plan.reason
    assert "requested" not in plan.reason, plan.reason


@FAST
@given(
    layouts_and_requests(),
    st.sampled_from(["auto", "direct", "rechunk"]),
    st.sampled_from([1.0, 1.25, DEFAULT_AMPLIFICATION_THRESHOLD, 3.0]),
    st.booleans(),
)
def test_plan_variable_invariants(case, strategy, threshold, distributed):
    layout, request = case
    plan = plan_variable(
        layout,
        request,
        max_mem=2**40,
        strategy=strategy,
        threshold=threshold,
        distributed=distributed,
    )
    target = normalize_chunks(layout, request)
    requested = oracle_amplification(layout, target)
    assert plan.chunks == target
    assert math.isclose(plan.requested_amplification, requested)
    assert math.isclose(plan.amplification, oracle_amplification(layout, plan.read_chunks))
    for lengths, n in zip(plan.read_chunks, layout.shape, strict=True):
        assert_partition(lengths, n)
    assert plan.strategy in ("direct", "rechunk")
    if strategy != "auto":
        assert plan.strategy == strategy
    if plan.strategy == "direct":
        assert plan.rechunk_method is None
        assert plan.read_chunks == target
    else:
        assert plan.rechunk_method == ("p2p" if distributed else "tasks")
        assert plan.read_chunks == normalize_chunks(layout, aligned_chunks(layout, target))
    if strategy == "auto":
        aligned = oracle_amplification(
            layout, normalize_chunks(layout, aligned_chunks(layout, target))
        )
        wasteful = requested > threshold and aligned < requested
        assert (plan.strategy == "rechunk") == wasteful
        assert plan.amplification <= requested or math.isclose(plan.amplification, requested)
    assert bool(plan.suggestion) == (requested > threshold)
    # the reason shows the plan's figure (equal to the oracle's up to rounding: 1.925
    # may be 1.92 or 1.93 at two decimals, depending on how the sum was added up)
    assert f"{plan.requested_amplification:.2f}" in plan.reason
    assert plan.tasks == math.prod(len(c) for c in plan.read_chunks)
    assert plan.memory_per_task == max(
        task_memory(layout, plan.read_chunks), task_memory(layout, plan.chunks)
    )
    if layout.concat_axis is not None and layout.shape[layout.concat_axis] > 0:
        expected_files = max(
            oracle_files_spanned(layout, a, b)
            for a, b in ranges_of(plan.read_chunks[layout.concat_axis])
        )
    else:
        expected_files = 1
    assert plan.max_files_per_task == expected_files


# -- Plan ----------------------------------------------------------------------------------


def _plan():
    nasty = Layout(
        "<b>q&a</b>",
        ("time", "x"),
        (10, 8),
        4,
        4,
        disk_chunks=(2, 4),
        concat_axis=0,
        file_lengths=(3, 5, 2),
    )
    variables = {
        "v": plan_variable(SAT, {"y": 300, "x": 300}, max_mem=2**40, distributed=True),
        nasty.name: plan_variable(nasty, {"x": 4}, max_mem=2**40),
        "t": plan_variable(FILES, {"time": 2}, max_mem=2**40),
    }
    return Plan(variables, n_files=120, max_mem=2**30, threshold=1.5)


def test_plan_repr_lists_every_variable():
    plan = _plan()
    text = repr(plan)
    lines = text.splitlines()
    assert lines[0].startswith("<xrdist.Plan: 120 files, 3 variables, ")
    assert f"{plan.tasks} read tasks" in lines[0]
    assert plan.tasks == 16 + 2 + 5
    assert "max_mem 1.0 GiB" in lines[0]
    assert "  v: rechunk (p2p), chunks {time: 120, y: 300, x: 300}, 16 tasks, " in text
    assert "amplification 1.00" in text
    assert "  <b>q&a</b>: direct, " in text
    assert "  t: direct, chunks {time: 2}, 5 tasks, amplification 1.40, " in text
    assert "2 files/task" in text
    # one line per variable plus one "why" line each
    assert len(lines) == 1 + 2 * 3
    assert sum(line.startswith("    why: ") for line in lines) == 3


def test_plan_repr_html_is_a_table_with_one_row_per_variable():
    plan = _plan()
    out = plan._repr_html_()
    assert out.startswith("<div>") and out.endswith("</div>")
    assert out.count("<table>") == 1 and out.count("</table>") == 1
    # a header row plus one row per variable
    assert out.count("<tr>") == 1 + len(plan.variables)
    assert out.count("<th>") == len(plan.rows()[0])
    # names are escaped, never injected
    assert "<b>q&a</b>" not in out
    assert html.escape("<b>q&a</b>") in out
    assert "<td>rechunk (p2p)</td>" in out
    assert "<td>1.40</td>" in out
    assert "&lt;xrdist.Plan: 120 files" in out


def test_empty_plan_renders():
    plan = Plan({}, n_files=0, max_mem=MiB, threshold=1.5)
    assert plan.tasks == 0
    assert "0 variables" in repr(plan)
    assert "<table>" in plan._repr_html_()


def test_plan_objects_pickle():
    plan = _plan()
    for obj in (SAT, plan.variables["v"], plan):
        assert pickle.loads(pickle.dumps(obj)) == obj
    assert isinstance(plan.variables["v"], VariablePlan)


# -- Layout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        # dims and shape of different lengths
        ({"dims": ("time",), "shape": (3, 4)}, r"dims \('time',\) do not match shape \(3, 4\)"),
        # disk chunks of the wrong rank
        (
            {"dims": ("time", "x"), "shape": (3, 4), "disk_chunks": (1,)},
            r"disk chunks \(1,\) do not match shape \(3, 4\)",
        ),
        # file lengths not summing to the axis
        (
            {"dims": ("time", "x"), "shape": (10, 4), "concat_axis": 0, "file_lengths": (3, 5)},
            r"file lengths sum to 8, but the 'time' axis has 10",
        ),
    ],
)
def test_layout_errors_carry_the_numbers(kwargs, words):
    with pytest.raises(PlanError, match=words):
        Layout("v", itemsize=4, decoded_itemsize=4, **kwargs)


def test_layout_tile_and_files():
    assert [SAT.tile(a) for a in range(3)] == [1, 256, 256]
    assert SAT.n_files == 120
    assert [CONTIG.tile(a) for a in range(2)] == [10, 256]
    assert ONE_D.n_files == 1


def test_rechunk_reads_fit_max_mem_by_cutting_the_concat_axis():
    """Whole-image chunks read for a tiled target: the aligned read of the whole stack
    would not fit, so it is cut along the files (a classic rechunk)."""
    layout = Layout(
        "v", ("time", "y", "x"), (120, 1024, 1024), 2, 4, (1, 1024, 1024), 0, (1,) * 120
    )
    budget = 256 * 2**20
    plan = plan_variable(layout, {"time": -1, "y": 256, "x": 256}, max_mem=budget)
    assert plan.strategy == "rechunk"
    assert plan.read_chunks[0] == (32, 32, 32, 24)
    assert plan.read_chunks[1:] == ((1024,), (1024,))
    assert task_memory(layout, plan.read_chunks) <= budget
    assert plan.amplification == 1.0


def test_rechunk_reads_are_cut_for_parallelism_too():
    """An aligned read that fits the budget in one task is still cut along the files so
    that min_tasks threads have work (whole-image chunks, 4 threads' worth)."""
    layout = Layout(
        "v", ("time", "y", "x"), (120, 1024, 1024), 2, 4, (1, 1024, 1024), 0, (1,) * 120
    )
    plan = plan_variable(layout, {"time": -1, "y": 256, "x": 256}, max_mem=2**30, min_tasks=4)
    assert plan.strategy == "rechunk"
    assert plan.tasks >= 4
    assert plan.read_chunks[0] == (30, 30, 30, 30)
    assert plan.amplification == 1.0


def test_the_suggestion_keeps_the_concat_axis_as_asked_within_max_mem():
    """600 x 600 cuts 256 x 256 tiles. The aligned chunks offered keep time whole, as
    asked, with 256-multiples small enough for max_mem; the rechunk reads on-disk-aligned
    chunks that split time instead, and says so in the reason."""
    from xrdist.plan import normalize_chunks, read_amplification, task_memory

    budget = 64 * 2**20
    plan = plan_variable(SAT, {"time": -1, "y": 600, "x": 600}, max_mem=budget)
    assert plan.strategy == "rechunk"
    assert plan.suggestion == {"time": -1, "y": 256, "x": 256}
    offered = normalize_chunks(SAT, plan.suggestion)
    assert task_memory(SAT, offered) <= budget and read_amplification(SAT, offered) == 1.0
    read = plan.read_chunk_request()
    assert read["time"] != -1 and read["y"] == read["x"] == 512
    assert str(read) in plan.reason
