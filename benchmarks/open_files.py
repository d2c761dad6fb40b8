"""Opening many small netCDF-4 files: engine="xrdist" against xarray's engines.

Usage: ``.venv/bin/python benchmarks/open_files.py [--files 1000] [--workdir DIR]``

Writes ``--files`` small files (two variables, a time coordinate) once, then for each
engine opens and closes them one after another with ``xr.open_dataset`` (each engine in a
fresh process, so no engine benefits from another's caches), and opens them all as one
stack with ``xrdist.open_mfdataset`` and ``xr.open_mfdataset`` (defaults, and with
``parallel=True, coords="minimal", compat="override"``).

xrdist runs twice: with an empty description cache (a cold first open), then in another
fresh process that finds the files described on disk ("described before": what a
restarted kernel or the next run sees; see ``xrdist.persist``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

CHILD = """
import glob, sys, time, warnings
warnings.simplefilter("ignore")
import xarray as xr
import xrdist
paths = sorted(glob.glob(sys.argv[1] + "/*.nc"))
what = sys.argv[2]
t = time.perf_counter()
if what == "stack-xrdist":
    xrdist.open_mfdataset(paths)
elif what == "stack-xarray":
    xr.open_mfdataset(paths)
elif what == "stack-xarray-fast":
    xr.open_mfdataset(paths, parallel=True, coords="minimal", compat="override")
else:
    for p in paths:
        xr.open_dataset(p, engine=what).close()
print(f"{time.perf_counter() - t:.2f}")
"""


def write_files(folder: Path, count: int) -> None:
    import numpy as np
    import pandas as pd
    import xarray as xr

    if len(list(folder.glob("*.nc"))) == count:
        return
    for i in range(count):
        ds = xr.Dataset(
            {
                "t2m": (("time", "y", "x"), np.random.rand(1, 32, 32).astype("f4")),
                "qc": (("y", "x"), np.zeros((32, 32), "u1")),
            },
            coords={
                "time": [pd.Timestamp("2020-01-01") + pd.Timedelta(days=i)],
                "y": np.arange(32.0),
                "x": np.arange(32.0),
            },
        )
        ds.to_netcdf(folder / f"f{i:05d}.nc", encoding={"t2m": {"zlib": True}})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "xrdist-open"))
    args = parser.parse_args()
    folder = Path(args.workdir) / f"{args.files}"
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_files(folder, args.files)
    print(f"{args.files} files in {folder}\n\n| what | seconds |\n|---|---|")
    runs = [
        ("xrdist", "cold"),
        ("xrdist", "described before"),
        ("netcdf4", ""),
        ("h5netcdf", ""),
        ("stack-xrdist", "cold"),
        ("stack-xrdist", "described before"),
        ("stack-xarray", ""),
        ("stack-xarray-fast", ""),
    ]
    for what, cache in runs:
        env = dict(os.environ)
        if cache == "cold":
            env["XRDIST_CACHE_DIR"] = cache_dir = tempfile.mkdtemp(prefix="xrdist-bench-")
        elif cache:
            env["XRDIST_CACHE_DIR"] = cache_dir
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(folder), what],
            capture_output=True,
            text=True,
            env=env,
        )
        seconds = (
            out.stdout.strip() or f"failed ({out.returncode}) after {time.perf_counter() - t:.1f} s"
        )
        label = f"{what} ({cache})" if cache else what
        print(f"| {label} | {seconds} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
