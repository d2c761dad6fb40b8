"""Reading a compressed stack with 1 and 2 reader threads: byte ranges against h5py.

Usage: ``.venv/bin/python benchmarks/read_scaling.py STACK_FOLDER [--repeat 3]``
(for example a ``tiles`` stack that ``xrdist bench`` writes under its ``--workdir``).

Reduces ``refl`` with a sum with ``chunks={"time": -1, "y": 256, "x": 256}`` (``--chunk``
sets y and x); ``--raw`` skips CF decoding. ``--reduction max`` takes the maximum
instead: far cheaper than numpy's NaN-aware sum, so that reading and decoding are
nearly all of the time (the sum, which two threads run twice as fast, flatters the
scaling of the reads).

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

    paths = sorted(glob.glob(f"{args.folder}/*.nc"))
    print(
        f"{len(paths)} files, decoded: {not args.raw}, chunks {args.chunk}, "
        f"reduction: {args.reduction}\n"
    )
    print("| path | threads | median s |\n|---|---|---|")
    for byte_range in (True, False):
        for n in (1, 2):
            times = []
            for _ in range(args.repeat):
                options = xrdist.set_options(byte_range_reads=byte_range, read_threads=n)
                with options, dask.config.set(scheduler="threads", num_workers=n):
                    ds = xrdist.open_mfdataset(
                        paths,
                        chunks={"time": -1, "y": args.chunk, "x": args.chunk},
                        mask_and_scale=not args.raw,
                    )
                    t = time.perf_counter()
                    float(getattr(ds.refl, args.reduction)())
                    times.append(time.perf_counter() - t)
            path = "byte-range" if byte_range else "h5py"
            print(f"| {path} | {n} | {statistics.median(times):.2f} |", flush=True)
    steps_alone(paths, args.repeat)
    return 0


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
    from xrdist.byterange import _inflate, _unshuffle
    from xrdist.decoding import decode_into

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

    def unshuffle(_: int) -> None:
        for data in plain:
            _unshuffle(data, dtype.itemsize)

    values = [np.frombuffer(_unshuffle(d, dtype.itemsize), dtype).reshape(shape) for d in plain]

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
            ("unshuffle", unshuffle),
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
