"""Byte-range reads give the library path's values bit for bit; corruption is named."""

from __future__ import annotations

import os

import h5py
import netCDF4  # noqa: F401  (puts its filter plugins on HDF5_PLUGIN_PATH for h5py)
import numpy as np
import pytest
import xarray as xr

import xrdist
from xrdist import shuffle
from xrdist.byterange import CorruptChunkError, _fletcher32, build_chunk_index
from xrdist.formats.h5pylib import chunk_index, read_path
from xrdist.shuffle import UnshuffleBatch, unshuffle

SHAPE, CHUNKS = (37, 23), (8, 7)  # edge chunks on both axes

FILTERS = {
    "raw": {},
    "deflate": {"compression": "gzip", "compression_opts": 4},
    "shuffle-deflate": {"compression": "gzip", "shuffle": True},
    "shuffle-deflate-fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "fletcher32": {"fletcher32": True},
    "bzip2": {"compression": 307, "compression_opts": (5,)},
    "zstd": {"compression": 32015, "compression_opts": (3,)},
    "zstd-shuffle": {"compression": 32015, "compression_opts": (3,), "shuffle": True},
}
DTYPES = ["i1", "u1", ">i2", "<u2", ">i4", "f4", ">f8", "u8"]


def _values(dtype: str, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(SHAPE) * 1e3).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, SHAPE, dtype=dt.newbyteorder("="), endpoint=True)


@pytest.fixture(scope="module")
def h5file(tmp_path_factory):
    """Every filter combination x dtype, with a fill value and unwritten chunks."""
    path = tmp_path_factory.mktemp("br") / "filters.h5"
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for fname, kwargs in FILTERS.items():
            for dtype in DTYPES:
                f.create_dataset(
                    f"{fname}/{dtype}",
                    data=_values(dtype, rng).astype(dtype),
                    chunks=CHUNKS,
                    fillvalue=7,
                    **kwargs,
                )
        sparse = f.create_dataset(
            "sparse",
            shape=(30, 30),
            chunks=(10, 10),
            dtype=">f4",
            fillvalue=-1.5,
            compression="gzip",
        )
        sparse[10:20, 0:10] = 42.0  # one chunk written; the rest unallocated
        f.create_dataset(
            "odd", data=np.arange(35, dtype="u1").reshape(5, 7), chunks=(5, 7), fletcher32=True
        )
    return str(path)


KEYS = [
    (slice(None), slice(None)),
    (slice(3, 29), slice(2, 21)),
    (5, slice(None)),
    (slice(1, 36, 4), slice(0, 23, 3)),
    (np.array([0, 9, 36]), np.array([22, 1, 7])),
    (slice(10, 10), slice(None)),
    # inside one stored chunk: a view of the decoded chunk, no copy
    (slice(8, 16), slice(7, 14)),
    (slice(33, 37), slice(21, 23)),
    (slice(9, 12, 2), 3),
]


@pytest.mark.parametrize("fname", list(FILTERS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_bit_for_bit_with_h5py(h5file, fname, dtype):
    name = f"{fname}/{dtype}"
    with h5py.File(h5file, "r") as f:
        dset = f[name]
        index = build_chunk_index(dset, h5file, name)
        fd = f.id.get_vfd_handle()
        full = index.read_box(fd, (slice(0, SHAPE[0]), slice(0, SHAPE[1])))
        assert full.dtype == dset.dtype
        np.testing.assert_array_equal(full, dset[...])
        assert full.tobytes() == dset[...].tobytes()
        assert read_path(f, None, name) == "byte-range"
        from xrdist.formats.h5pylib import read

        for key in KEYS:
            expected = dset[...][
                np.ix_(
                    *[
                        np.arange(n)[k] if not isinstance(k, int) else [k]
                        for k, n in zip(key, SHAPE, strict=True)
                    ]
                )
            ]
            if isinstance(key[0], int):
                expected = expected[0]
            elif isinstance(key[1], int):
                expected = expected[:, 0]
            got = read(f, None, name, key)
            np.testing.assert_array_equal(got, expected)
            assert got.flags.writeable, key  # values handed to users can be changed


@pytest.mark.parametrize("itemsize", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("leftover", [0, 1, 3])
def test_unshuffle_puts_byte_b_of_element_i_from_plane_b(itemsize, leftover):
    shuffled = np.random.default_rng(itemsize).integers(0, 256, 1000 * itemsize + leftover)
    shuffled = shuffled.astype(np.uint8)
    n = shuffled.size // itemsize  # whole elements
    expected = [shuffled[b * n + i] for i in range(n) for b in range(itemsize)]
    expected += list(shuffled[n * itemsize :])  # bytes past the last element: as they are
    assert unshuffle(shuffled.tobytes(), itemsize).tolist() == expected


BOXES = [(slice(0, 37), slice(0, 23)), (slice(3, 29), slice(2, 21)), (slice(8, 16), slice(7, 14))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_box_into_a_batch_matches_h5py(h5file, dtype):
    """Boxes of every filter combination written into outputs of their own dtype and of
    float64 through one batch of three chunks' room: chunks stored with deflate then
    shuffle wait in the batch (flushed when full, and at the end), the others (no
    shuffle, fletcher32, zstd, unallocated) are written at once; all are h5py's values."""
    itemsize = np.dtype(dtype).itemsize
    expected, outs = [], []
    with h5py.File(h5file, "r") as f, UnshuffleBatch(limit=3 * 56 * itemsize) as batch:
        fd = f.id.get_vfd_handle()
        for fname in [*FILTERS, "sparse"]:
            name = "sparse" if fname == "sparse" else f"{fname}/{dtype}"
            dset = f[name]
            index = build_chunk_index(dset, h5file, name)
            for box in BOXES if fname != "sparse" else [(slice(5, 25), slice(0, 30))]:
                for out_dtype in (dset.dtype, np.dtype("f8")):
                    out = np.empty([s.stop - s.start for s in box], out_dtype)
                    assert index.read_box_into(fd, box, out, batch) == dset.dtype
                    outs.append(out)
                    expected.append(dset[box].astype(out_dtype))
        batch.flush()
    for out, values in zip(outs, expected, strict=True):
        assert out.tobytes() == values.tobytes()


def test_a_stack_window_is_unshuffled_in_one_pass(tmp_path, monkeypatch):
    """Twelve files (above the size read with the metadata) of one shuffled, deflated
    chunk per window, read without the compiled loop: each window's twelve chunks are
    unshuffled by the same numpy calls (one pass per window, not twelve), and the values
    are those xarray reads."""
    paths = []
    for i in range(12):
        values = np.arange(256 * 256, dtype="u2").reshape(1, 256, 256) * (i + 1)
        ds = xr.Dataset({"v": (("time", "y", "x"), values)}, coords={"time": [i]})
        path = tmp_path / f"s{i:02d}.nc"
        ds.to_netcdf(
            path, encoding={"v": {"zlib": True, "shuffle": True, "chunksizes": (1, 128, 128)}}
        )
        paths.append(str(path))
    passes = []
    unshuffle_planes = shuffle.unshuffle_planes

    def counted(planes):
        passes.append(planes.shape[0])
        return unshuffle_planes(planes)

    monkeypatch.setattr(shuffle, "unshuffle_planes", counted)
    with xrdist.set_options(read_threads=1, compiled_reads=False):
        stack = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": 128, "x": 128}).v
        stack.values  # noqa: B018  (a file's first read goes through h5py: it indexes the chunks)
        passes.clear()
        got = stack.values
    assert passes == [12, 12, 12, 12]  # four windows
    with xr.open_mfdataset(paths, engine="h5netcdf", combine="by_coords") as expected:
        np.testing.assert_array_equal(got, expected.v.values)


def test_a_thread_keeps_its_staging_bytes_for_its_next_batch():
    """Batches one after another in a thread stage in the same bytes (not a fresh
    megabyte per group of files); a batch opened inside another stages in its own."""
    dtype, chunks = np.dtype("u2"), (16, 16)
    with UnshuffleBatch() as outer:
        first = outer.stage(dtype, chunks)
        with UnshuffleBatch() as inner:
            assert not np.shares_memory(inner.stage(dtype, chunks), first)
    with UnshuffleBatch() as later:
        assert np.shares_memory(later.stage(dtype, chunks), first)


def test_unallocated_chunks_read_as_fill_value(h5file):
    with h5py.File(h5file, "r") as f:
        index = build_chunk_index(f["sparse"], h5file, "sparse")
        assert (index.offsets >= 0).sum() == 1
        got = index.read_box(f.id.get_vfd_handle(), (slice(0, 30), slice(5, 25)))
        np.testing.assert_array_equal(got, f["sparse"][:, 5:25])
        assert got.dtype == np.dtype(">f4")
        inside = index.read_box(f.id.get_vfd_handle(), (slice(21, 24), slice(2, 9)))
        np.testing.assert_array_equal(inside, np.full((3, 7), -1.5, ">f4"))


def test_fletcher32_matches_hdf5_on_odd_lengths(h5file):
    """35-byte chunk: the odd last byte is summed on its own, as HDF5 does."""
    with h5py.File(h5file, "r") as f:
        index = build_chunk_index(f["odd"], h5file, "odd")
        np.testing.assert_array_equal(
            index.read_box(f.id.get_vfd_handle(), (slice(0, 5), slice(0, 7))), f["odd"][...]
        )
    assert _fletcher32(b"\x01\x02\x03") == _fletcher32(b"\x01\x02\x03")
    assert _fletcher32(b"") == 0


def test_corrupt_chunk_names_file_variable_and_chunk(tmp_path):
    path = tmp_path / "corrupt.nc"
    data = np.random.default_rng(1).random((200, 150))  # above the small-value threshold
    xr.Dataset({"good": (("y", "x"), data), "bad": (("y", "x"), data)}).to_netcdf(
        path, encoding={v: {"zlib": True, "chunksizes": (100, 75)} for v in ("good", "bad")}
    )
    with h5py.File(path, "r") as f:
        info = f["bad"].id.get_chunk_info(3)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 10 : info.byte_offset + 40] = b"\xff" * 30
    path.write_bytes(bytes(raw))
    ds = xr.open_dataset(path, engine="xrdist")
    with pytest.raises(CorruptChunkError, match=r"corrupt.nc', variable 'bad', chunk \(1, 1\)"):
        ds["bad"].values  # noqa: B018
    np.testing.assert_array_equal(ds["good"].values, data)  # other variables still read


def test_checksum_mismatch_is_an_error(tmp_path):
    path = tmp_path / "sum.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("v", data=np.arange(100, dtype="i4"), chunks=(50,), fletcher32=True)
        info = f["v"].id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 4] ^= 0xFF  # flip payload bits, leave the checksum
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        index = build_chunk_index(f["v"], str(path), "v")
        with pytest.raises(CorruptChunkError, match="fletcher32 checksum mismatch"):
            index.read_box(f.id.get_vfd_handle(), (slice(0, 100),))


def test_option_switches_to_the_library_path(h5file):
    with h5py.File(h5file, "r") as f:
        with xrdist.set_options(byte_range_reads=False):
            assert read_path(f, None, "deflate/f4") == "h5py: byte_range_reads is off"
        assert isinstance(chunk_index(f, None, "deflate/f4"), object)


def test_unsupported_layouts_say_why(tmp_path):
    path = tmp_path / "layouts.h5"
    with h5py.File(path, "w") as f:
        compact = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        compact.set_layout(h5py.h5d.COMPACT)
        f.create_dataset("compact", data=np.arange(10.0), dcpl=compact)
        f.create_dataset(
            "strings",
            data=np.array(["a", "b"], dtype=object),
            dtype=h5py.string_dtype(),
            chunks=(1,),
        )
        f.create_dataset("lzf", data=np.arange(10.0), chunks=(5,), compression="lzf")
    with h5py.File(path, "r") as f:
        assert read_path(f, None, "compact") == "h5py: compact layout (stored in the object header)"
        assert "dtype" in read_path(f, None, "strings")
        assert read_path(f, None, "lzf") == "h5py: filter 32000 is decoded by HDF5 only"


def test_corrupt_small_variable_is_named_at_open(tmp_path):
    path = tmp_path / "small.nc"
    xr.Dataset({"tiny": ("x", np.random.default_rng(2).random(500))}).to_netcdf(
        path, encoding={"tiny": {"zlib": True, "chunksizes": (250,)}}
    )
    with h5py.File(path, "r") as f:
        info = f["tiny"].id.get_chunk_info(0)
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 5 : info.byte_offset + 50] = b"\x00" * 45
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError, match=r"cannot read variable 'tiny' of .*small.nc"):
        xr.open_dataset(path, engine="xrdist")


CONTIGUOUS_KEYS = [
    (slice(None), slice(None), slice(None)),  # everything: one read
    (2, slice(3, 9), slice(None)),  # whole rows: one read per leading index
    (slice(1, 4), slice(0, 11), slice(5, 6)),  # single columns: one read per row
    (slice(None), [0, 5, 10], slice(2, 17, 3)),  # lists and steps: picked from the box
    (-1, -1, -1),
    (slice(4, 4), slice(None), slice(None)),  # empty
]


@pytest.mark.parametrize("dtype", ["u1", ">i2", "<f4", ">f8"])
@pytest.mark.parametrize("key", CONTIGUOUS_KEYS, ids=range(len(CONTIGUOUS_KEYS)))
def test_contiguous_variables_are_read_by_offset_bit_for_bit(tmp_path, dtype, key):
    path = tmp_path / "contiguous.h5"
    values = _values(dtype, np.random.default_rng(3)).astype(dtype)
    cube = np.stack([values[:, :17] + i for i in range(5)]).astype(dtype)  # (5, 37, 17)
    with h5py.File(path, "w") as f:
        f.create_dataset("cube", data=cube)
        f.create_dataset("never_written", shape=(4, 6), dtype=dtype, fillvalue=3)
        f["scalar"] = np.array(2.5, dtype=">f8")
    with h5py.File(path, "r") as f:
        assert read_path(f, None, "cube") == "byte-range"
        from xrdist.formats.h5pylib import read

        got = read(f, None, "cube", key)
        with xrdist.set_options(byte_range_reads=False):
            expected = read(f, None, "cube", key)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(
            read(f, None, "never_written", (slice(None), slice(1, 3))), np.full((4, 2), 3)
        )
        assert read(f, None, "scalar", ()) == 2.5


def test_truncated_contiguous_variable_is_named(tmp_path):
    path = tmp_path / "cut.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("big", data=np.arange(100_000.0))
        offset = f["big"].id.get_offset()
    with h5py.File(path, "r") as f:
        from xrdist.formats.h5pylib import read

        with open(path, "r+b") as fh:  # cut short while open (HDF5 refuses to open it)
            fh.truncate(offset + 1000)
        with pytest.raises(CorruptChunkError, match=r"cut\.h5.*'big'.*file ends"):
            read(f, None, "big", (slice(90_000, 90_010),))


@pytest.mark.parametrize(
    ("starts", "count", "expected"),
    [
        ([0], 4, [(0, 1)]),
        # rows 16 elements apart, 4 read: gaps of 12 * 8 bytes, one read
        ([0, 16, 32, 48], 4, [(0, 4)]),
        # a gap above the limit splits
        ([0, 16, 16 + 8192, 16 + 8192 + 16], 4, [(0, 2), (2, 4)]),
        # a span above the read limit splits; a run longer than it stands alone
        ([0, 1 << 20, 2 << 20, 3 << 20], 1 << 20, [(0, 2), (2, 4)]),
        ([0, 3 << 20], 3 << 20, [(0, 1), (1, 2)]),
    ],
)
def test_contiguous_runs_are_coalesced_within_limits(starts, count, expected):
    from xrdist.byterange import CONTIGUOUS_MAX_GAP, CONTIGUOUS_MAX_READ, _coalesce

    assert CONTIGUOUS_MAX_GAP == 32 * 1024 and CONTIGUOUS_MAX_READ == 16 << 20
    assert _coalesce(np.array(starts), count, 8) == expected


def test_contiguous_window_costs_one_read_per_file(tmp_path, monkeypatch):
    """A 256-wide window of a 1024-wide image: one pread for the whole window, and the
    values still equal h5py's."""
    import xrdist.byterange as byterange

    path = tmp_path / "image.h5"
    image = np.arange(512 * 1024, dtype="<u2").reshape(512, 1024)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
    calls = []
    real = os.pread

    def counting_pread(fd, n, offset):
        calls.append(n)
        return real(fd, n, offset)

    from xrdist.formats.h5pylib import read

    with h5py.File(path, "r") as f:
        monkeypatch.setattr(byterange.os, "pread", counting_pread)
        got = read(f, None, "image", (slice(100, 356), slice(512, 768)))
        monkeypatch.undo()
    np.testing.assert_array_equal(got, image[100:356, 512:768])
    assert len(calls) == 1
    assert calls[0] == (255 * 1024 + 256) * 2
