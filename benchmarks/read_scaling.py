"""Reading a compressed stack with 1 and 2 reader threads: byte ranges against h5py.

Three paths: byte ranges with chunks read by the compiled loop (option
``compiled_reads``, when numba is installed), byte ranges decoded chunk by chunk in
Python calls (``compiled_reads=False``), and h5py (``byte_range_reads=False``).

Usage: ``.venv/bin/python benchmarks/read_scaling.py STACK_FOLDER [--repeat 3]``
(for example a ``tiles`` stack that ``xrdist bench`` writes under its ``--workdir``).

Reduces ``refl`` with a sum with ``chunks={"time": -1, "y": 256, "x": 256}`` (``--chunk``
sets y and x); ``--raw`` skips CF decoding. ``--reduction max`` takes the maximum
instead: far cheaper than numpy's NaN-aware sum, so that reading and decoding are
nearly all of the time (the sum, which two threads run twice as fast, flatters the
scaling of the reads).

A last row reads the same windows straight from each file's chunk index with a plain
thread pool (no leases, no checks of the files, no dask): the most a whole read could
gain from a second core on this machine with xrdist's decoders. Each repeat runs one
and two threads back to back, and the speed-up is the median of the repeats' ratios.

A second table times the steps of a read alone, without xrdist's per-file work (leases,
checks, window assembly) or dask: the raw bytes of every on-disk chunk of one window are
read once, then inflated, unshuffled and decoded over and over by 1 and 2 threads. Their
speed-ups are the most a whole read can gain from a second core on this machine.
"""

from __future__ import annotations

import argparse
import glob
import statistics
import sys
import time
import warnings
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--raw", action="store_true", help="no CF decoding (mask_and_scale)")
    parser.add_argument("--chunk", type=int, default=256, help="y and x chunk length")
    parser.add_argument("--reduction", choices=("sum", "max"), default="sum")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import dask

    import xrdist
    from xrdist.groupread import compiled_reads_unavailable

    paths = sorted(glob.glob(f"{args.folder}/*.nc"))
    print(
        f"{len(paths)} files, decoded: {not args.raw}, chunks {args.chunk}, "
        f"reduction: {args.reduction}\n"
    )

    def whole_read(byte_range: bool, compiled: bool, n: int) -> tuple[float, float]:
        options = xrdist.set_options(
            byte_range_reads=byte_range, compiled_reads=compiled, read_threads=n
        )
        with options, dask.config.set(scheduler="threads", num_workers=n):
            ds = xrdist.open_mfdataset(
                paths,
                chunks={"time": -1, "y": args.chunk, "x": args.chunk},
                mask_and_scale=not args.raw,
            )
            return timed(lambda: float(getattr(ds.refl, args.reduction)()))

    unavailable = compiled_reads_unavailable()
    if unavailable:
        print(f"Compiled reads are unavailable ({unavailable}): that row is left out.\n")
    print(TABLE_HEAD)
    paths_read = [("byte-range, compiled", True, True)] if not unavailable else []
    paths_read += [("byte-range, in Python", True, False), ("h5py", False, False)]
    for path, byte_range, compiled in paths_read:
        whole_read(byte_range, compiled, 1)  # warm: handles, indexes, page cache
        read = lambda n, b=byte_range, c=compiled: whole_read(b, c, n)  # noqa: E731
        print_paired(path, read, args.repeat)
    bare = bare_reads(paths, args.chunk, args.reduction, not args.raw)
    bare(1)
    print_paired("chunk index alone: no leases, checks or dask", bare, args.repeat)
    print(
        "\nPaired: each repeat runs 1 and 2 threads back to back (in turn first), and "
        "the speed-up is the median of the repeats' own ratios, so that a host whose "
        "speed drifts between repeats moves both sides. Cores busy: process CPU time "
        "over wall time."
    )
    steps_alone(paths, args.repeat)
    return 0


TABLE_HEAD = (
    "| path | threads | median s | CPU s | cores busy | speed-up, paired |\n"
    "|---|---|---|---|---|---|"
)


def timed(run: Any) -> tuple[float, float]:
    """Wall and process CPU seconds of ``run()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def print_paired(path: str, read: Any, repeat: int) -> None:
    """Rows for 1 and 2 threads of ``read(n) -> (wall, cpu)``, run in pairs."""
    runs: dict[int, list[tuple[float, float]]] = {1: [], 2: []}
    for r in range(repeat):
        for n in (1, 2) if r % 2 == 0 else (2, 1):
            runs[n].append(read(n))
    ratios = [one[0] / two[0] for one, two in zip(runs[1], runs[2], strict=True)]
    for n in (1, 2):
        wall = statistics.median(w for w, _ in runs[n])
        cpu = statistics.median(c for _, c in runs[n])
        gain = f"{statistics.median(ratios):.2f}" if n == 2 else ""
        print(f"| {path} | {n} | {wall:.2f} | {cpu:.2f} | {cpu / wall:.2f} | {gain} |", flush=True)


def bare_reads(paths: list[str], chunk: int, reduction: str, decoded: bool) -> Any:
    """``read(n)``: the same windows as the whole read, by ``n`` threads of a plain pool,
    with the same steps (positional reads, xrdist's inflate and batched unshuffle straight
    into the window, masking and scaling by groups of files, the reduction) and none of
    xrdist's layers around them: no leases, no checks of the files, no dask. What the
    machine allows a read to gain."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import h5py
    import numpy as np

    from xrdist.array import DECODE_BATCH_BYTES
    from xrdist.byterange import build_chunk_index
    from xrdist.shuffle import UnshuffleBatch

    indexes, fds = [], []
    for path in paths:
        with h5py.File(path, "r") as f:
            dset = f["refl"]
            indexes.append(build_chunk_index(dset, path, "refl"))
            fill = dset.attrs.get("_FillValue", [None])[0]
            scale = dset.attrs.get("scale_factor", [None])[0]
        fds.append(os.open(path, os.O_RDONLY))
    first = indexes[0]
    dates, ny, nx = len(paths), first.shape[1], first.shape[2]
    windows = [(y, x) for y in range(0, ny, chunk) for x in range(0, nx, chunk)]
    reduce = np.nanmax if reduction == "max" else np.nansum

    def window(corner: tuple[int, int]) -> float:
        y, x = corner
        box = (slice(0, 1), slice(y, min(ny, y + chunk)), slice(x, min(nx, x + chunk)))
        out = np.empty((dates, box[1].stop - y, box[2].stop - x), "f4" if decoded else first.dtype)
        group = max(1, DECODE_BATCH_BYTES // (out.nbytes // dates))  # files decoded at once
        for start in range(0, dates, group):
            part = out[start : start + group]
            with UnshuffleBatch() as batch:
                for t in range(start, start + len(part)):
                    indexes[t].read_box_into(fds[t], box, out[t : t + 1], batch)
                batch.flush()
            if decoded:
                if fill is not None:
                    np.copyto(part, np.nan, where=part == np.float32(fill))
                if scale is not None:
                    part *= np.float32(scale)
        return float(reduce(out))

    def read(n: int) -> tuple[float, float]:
        with ThreadPoolExecutor(n) as pool:
            return timed(lambda: list(pool.map(window, windows)))

    return read


#: Passes over the chunks per timing of a step alone (long enough to time steadily).
PASSES = 16


def steps_alone(paths: list[str], repeat: int) -> None:
    """Print the 1- and 2-thread times of inflating, unshuffling and decoding the stored
    chunks of the files' first on-disk chunk position, with no other work between."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import h5py
    import numpy as np

    import xrdist
    from xrdist.byterange import _inflate
    from xrdist.decoding import decode_into
    from xrdist.shuffle import UNSHUFFLE_BATCH_BYTES, unshuffle, unshuffle_planes

    raws, shape = [], None
    for path in paths:
        with h5py.File(path, "r") as f:
            dset = f["refl"]
            info = dset.id.get_chunk_info(0)
            shape, dtype = dset.chunks, dset.dtype
            fd = os.open(path, os.O_RDONLY)
            try:
                raws.append(os.pread(fd, info.size, info.byte_offset))
            finally:
                os.close(fd)
    size = int(np.prod(shape)) * dtype.itemsize
    decode = xrdist.open_mfdataset(paths[:2]).refl.variable._data.array.decode
    window = np.empty((2, *shape), "f4")

    def inflate(_: int) -> None:
        for raw in raws:
            _inflate(raw, size)

    plain = [_inflate(raw, size) for raw in raws]

    def unshuffled(_: int) -> None:
        for data in plain:
            unshuffle(data, dtype.itemsize)

    batched = max(1, UNSHUFFLE_BATCH_BYTES // size)  # chunks an UnshuffleBatch unshuffles at once
    planes = [
        np.stack([np.frombuffer(d, np.uint8) for d in plain[i : i + batched]]).reshape(
            -1, dtype.itemsize, size // dtype.itemsize
        )
        for i in range(0, len(plain), batched)
    ]

    def unshuffle_batched(_: int) -> None:
        for p in planes:
            unshuffle_planes(p)

    values = [np.frombuffer(unshuffle(d, dtype.itemsize), dtype).reshape(shape) for d in plain]

    def decoded(worker: int) -> None:
        for v in values:
            decode_into(decode, v, window[worker])

    group = 16  # chunks decoded at once, as a reader decodes a group of files
    stacked = [np.stack(values[i : i + group]) for i in range(0, len(values), group)]
    windows = np.empty((2, group, *shape), "f4")

    def decoded_grouped(worker: int) -> None:
        for v in stacked:
            decode_into(decode, v, windows[worker, : len(v)])

    print(f"\nSteps alone, {len(raws)} chunks of {shape}: seconds for {PASSES} passes\n")
    print("| step | 1 thread | 2 threads | speed-up |\n|---|---|---|---|")
    with ThreadPoolExecutor(2) as pool:
        steps = (
            ("inflate", inflate),
            ("unshuffle, chunk by chunk", unshuffled),
            (f"unshuffle, {batched} chunks at once", unshuffle_batched),
            ("decode, chunk by chunk", decoded),
            (f"decode, {group} chunks at once", decoded_grouped),
        )
        for name, step in steps:
            one, two = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                for i in range(PASSES):
                    step(i % 2)
                one.append(time.perf_counter() - t)
                t = time.perf_counter()
                list(pool.map(step, [0, 1] * (PASSES // 2)))
                two.append(time.perf_counter() - t)
            a, b = statistics.median(one), statistics.median(two)
            print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
