"""Reading a compressed stack with 1 and 2 reader threads: byte ranges against h5py.

Usage: ``.venv/bin/python benchmarks/read_scaling.py STACK_FOLDER [--repeat 3]``
(for example a ``tiles`` stack that ``xrdist bench`` writes under its ``--workdir``).

Reduces ``refl`` with a sum (so that reading and decoding dominate) with
``chunks={"time": -1, "y": 256, "x": 256}`` (``--chunk`` sets y and x); ``--raw`` skips
CF decoding.
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
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import dask

    import xrdist

    paths = sorted(glob.glob(f"{args.folder}/*.nc"))
    print(f"{len(paths)} files, decoded: {not args.raw}, chunks {args.chunk}\n")
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
                    float(ds.refl.sum())
                    times.append(time.perf_counter() - t)
            path = "byte-range" if byte_range else "h5py"
            print(f"| {path} | {n} | {statistics.median(times):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
