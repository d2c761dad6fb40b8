"""Read throughput of a stack of COGs: xrdist's tile reader against rioxarray (GDAL).

Usage (from the repository root)::

    .venv/bin/python benchmarks/tiff_reads.py                      # 40 dates of 1024^2
    .venv/bin/python benchmarks/tiff_reads.py --dates 120 --size 2048 --repeat 5

Writes (once, in ``--workdir``) a synthetic stack of one-band uint16 COGs (deflate with
horizontal differencing, 256 x 256 tiles, nodata 0, scale 1e-4, one file per date; see
``xrdist.synthetic``), then for 1 and 2 threads reads the whole stack in windows of
``--window`` pixels, every date of a window in one dask chunk, reduced with a sum so that
reading and decoding dominate:

``xrdist``     ``xrdist.open_mfdataset(paths, chunks={"time": -1, "y": w, "x": w})``
``rioxarray``  ``rioxarray.open_rasterio(p, chunks={"y": w, "x": w}, mask_and_scale=True)``
               per file, ``xr.concat`` along ``time``, then ``.chunk({"time": -1})`` (what a
               user of rioxarray writes; GDAL decodes)

Both decode nodata to NaN and apply the scale (float32). Throughput is the stack's stored
(uncompressed) bytes over the median wall time of the reduction, after one warm-up run
(so the files are in the page cache for both: this measures decoding and the work
around it, not the disk). The last column checks that both sums agree.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path


def xrdist_sum(paths: list[str], window: int) -> float:
    import xrdist

    ds = xrdist.open_mfdataset(paths, chunks={"time": -1, "y": window, "x": window})
    return float(ds.band_data.sum())


def rioxarray_sum(paths: list[str], window: int) -> float:
    import rioxarray
    import xarray as xr

    arrays = [
        rioxarray.open_rasterio(p, chunks={"y": window, "x": window}, mask_and_scale=True)
        for p in paths
    ]
    stacked = xr.concat(arrays, dim="time").chunk({"time": -1})
    return float(stacked.sum())


METHODS = {"xrdist": xrdist_sum, "rioxarray": rioxarray_sum}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dates", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=".bench-tiff")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import dask

    import xrdist
    from xrdist.synthetic import write_stack

    paths = write_stack(
        Path(args.workdir) / f"cog-{args.dates}-{args.size}",
        dates=args.dates,
        size=args.size,
        file_format="cog",
    )
    stored = args.dates * args.size * args.size * 2
    print(
        f"{args.dates} COGs of {args.size}x{args.size} uint16 ({stored / 2**20:.0f} MiB "
        f"stored), windows of {args.window}x{args.window} x all dates\n"
    )
    print("| method | threads | median s | MB/s (stored bytes) | sum |\n|---|---|---|---|---|")
    sums = {}
    for name, method in METHODS.items():
        for threads in (1, 2):
            options = xrdist.set_options(read_threads=threads)
            with options, dask.config.set(scheduler="threads", num_workers=threads):
                method(paths, args.window)  # warm-up: page cache, imports, index
                times = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    sums[name] = method(paths, args.window)
                    times.append(time.perf_counter() - t)
            wall = statistics.median(times)
            print(
                f"| {name} | {threads} | {wall:.2f} | {stored / wall / 1e6:.0f} | "
                f"{sums[name]:.6g} |",
                flush=True,
            )
    a, b = sums["xrdist"], sums["rioxarray"]
    if abs(a - b) > 1e-5 * abs(b):
        print(f"\nSUMS DIFFER: xrdist {a!r} vs rioxarray {b!r}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
