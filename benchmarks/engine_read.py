"""Reading one compressed variable in chunks: engine="xrdist" against xarray's engines.

Usage: ``.venv/bin/python benchmarks/engine_read.py [--size 4096] [--repeat 3] [--workdir DIR]``

Writes a netCDF-4 file (``--size`` x ``--size`` float32, zlib level 1 + shuffle, on-disk
chunks of 256 x 256) and ``--repeat`` copies of it once, then for each engine, in a fresh
process, ``xr.open_dataset(path, engine=E, chunks={"y": 1024, "x": 1024})`` and
``.sum().compute()`` on dask's threaded scheduler: once on the first file (a warm-up:
imports, first-use costs), then once on each copy, timed (open included), the median
printed. Each timed read is a file's first: a library's cache of decoded chunks (netCDF-C
keeps one per open variable) cannot serve it, as it cannot serve a user's one pass over
their data.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import statistics, sys, time, warnings
warnings.simplefilter("ignore")
import dask
import xarray as xr
engine, paths = sys.argv[1], sys.argv[2:]
times = []
with dask.config.set(scheduler="threads"):
    for path in paths:
        t = time.perf_counter()
        ds = xr.open_dataset(path, engine=engine, chunks={"y": 1024, "x": 1024})
        float(ds.v.sum())
        times.append(time.perf_counter() - t)
print(f"{statistics.median(times[1:]):.3f}")
"""


def write_file(path: Path, size: int) -> None:
    import numpy as np
    import xarray as xr

    if path.exists():
        return
    rng = np.random.default_rng(0)
    y, x = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    values = (np.sin(8 * x) * np.cos(6 * y) + rng.normal(0, 0.05, (size, size))).astype("f4")
    ds = xr.Dataset({"v": (("y", "x"), values)})
    encoding = {"v": {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (256, 256)}}
    ds.to_netcdf(path, engine="netcdf4", encoding=encoding)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "xrdist-engine"))
    args = parser.parse_args()
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"v{args.size}.nc"
    write_file(path, args.size)
    copies = [folder / f"v{args.size}-{i}.nc" for i in range(args.repeat)]
    for copy in copies:
        if not copy.exists():
            shutil.copyfile(path, copy)
    mib = args.size**2 * 4 / 2**20
    print(f"{path}: {mib:.0f} MiB decoded\n\n| engine | seconds | MiB/s |\n|---|---|---|")
    for engine in ("xrdist", "netcdf4", "h5netcdf"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, engine, str(path), *map(str, copies)],
            capture_output=True,
            text=True,
        )
        if out.returncode:
            print(f"| {engine} | failed: {out.stderr.strip().splitlines()[-1]} | |")
            continue
        seconds = float(out.stdout.strip())
        print(f"| {engine} | {seconds:.3f} | {mib / seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
