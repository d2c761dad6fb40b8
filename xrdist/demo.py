"""``xrdist demo``: a cloud-free median composite of a satellite stack, xrdist against
plain xarray + dask on the same files.

1. Writes a synthetic stack (:mod:`xrdist.synthetic`), one netCDF file or one COG
   (``--format cog``) per date, or reuses it.
2. Shows xrdist's plan, computes the composite with a progress bar, and writes a PNG of a
   cloudy date beside the composite.
3. Runs each method in a fresh process (so memory and I/O are its own) and prints a table:
   wall time, peak memory of the whole process tree (workers included), tasks of the
   optimised graph, bytes read from files, files opened and whether results agree.

Methods: ``xrdist`` = ``xrdist.open_mfdataset(paths, chunks=CHUNKS)``; the baseline is
``xr.open_mfdataset(paths, engine="netcdf4", chunks={}).chunk(CHUNKS)`` ("xarray") for
netCDF and ``xr.open_mfdataset(paths, engine="rasterio", combine="nested",
concat_dim="time", chunks={}).chunk(CHUNKS)`` ("rioxarray") for COGs; then
``.median("time")``. The measuring is :mod:`xrdist.bench`'s (``xrdist bench`` runs more
methods and layouts): wall time is open + graph + compute, the median kernel is warmed up
before timing, bytes read are counted from open to result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xrdist import bench

MIB = 1024**2
#: The baseline of each format: (method of xrdist.bench, label in the table).
BASELINE = {"netcdf": ("netcdf4", "xarray"), "cog": ("rioxarray", "rioxarray")}


# -- the demo ---------------------------------------------------------------------------


def composite_png(paths: list[str], chunks: dict[str, int], fmt: str, out: Path) -> Path | None:
    """Compute the composite of every band with xrdist (progress bar) and plot the first
    band's beside a cloudy date."""
    from dask.diagnostics import ProgressBar

    import xrdist

    ds = xrdist.open_mfdataset(paths, chunks=chunks)
    refl = ds[bench.variable(fmt)]
    with ProgressBar(minimum=0.5):
        composite = refl.median("time").compute()
    if "band" in refl.dims:
        refl, composite = refl.isel(band=0), composite.isel(band=0)
    cloudy = int(refl.isnull().sum(("y", "x")).argmax("time"))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG (pip install 'xrdist[demo]')")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), constrained_layout=True)
    date = str(ds.time.values[cloudy])[:10]
    for ax, image, title in [
        (axes[0], refl.isel(time=cloudy).values, f"one date ({date}): clouds are gaps"),
        (axes[1], composite.values, f"median of {len(paths)} dates: cloud-free"),
    ]:
        shown = ax.imshow(image, vmin=0.0, vmax=0.6, cmap="viridis")
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, shrink=0.8, label="reflectance")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def run(args: argparse.Namespace) -> int:
    from xrdist.mfdataset import plan
    from xrdist.synthetic import write_stack

    fmt = args.format
    folder = Path(args.folder)
    side = min(bench.TILE, args.size)
    kind = "netCDF file" if fmt == "netcdf" else "Cloud-Optimized GeoTIFF"
    bands = f"{args.bands} bands of " if args.bands > 1 else ""
    print(
        f"stack: {args.dates} dates of {bands}{args.size}x{args.size}, one {kind} per date, "
        f"tiled {side}x{side}, clouds as nodata -> {folder}"
    )
    name = ("stack" if fmt == "netcdf" else "stack-cog") + (
        f"-{args.bands}bands" if args.bands > 1 else ""
    )
    stack = folder / name
    paths = write_stack(stack, dates=args.dates, size=args.size, file_format=fmt, bands=args.bands)
    chunks = bench.chunks_for(args.size, fmt, args.bands)
    print(f"\nxrdist's plan for chunks {chunks}:\n{plan(paths, chunks=chunks)}\n")
    png = composite_png(paths, chunks, fmt, folder / "composite.png")
    where = args.cluster or args.scheduler
    print("\nmeasuring each method in a fresh process" + (f" on {where}" if where else "") + " ...")
    env = bench.child_env(folder / ".numba-cache")
    bench.fill_jit_cache(env)
    baseline, label = BASELINE[fmt]
    rows = []
    for method, name in (("xrdist", "xrdist"), (baseline, label)):
        spec = {
            "method": method,
            "reader": method,
            "folder": str(stack),
            "format": fmt,
            "chunks": chunks,
            "cluster": where,
            "warm": True,
        }
        row = bench.spawn(spec, env)
        if not row["ok"]:
            raise RuntimeError(f"{name} failed:\n{row['stderr'][-2000:]}")
        row["label"] = name
        rows.append(row)
        if row.get("dashboard"):
            print(f"  {name}: dask dashboard was at {row['dashboard']}")
    if args.scheduler:
        print("  (peak memory is this machine's processes only: not the cluster's workers)")
    print("\n" + bench.table(rows, bench.DEMO_COLUMNS))
    x, b = rows
    print(
        f"\nxrdist against {label} + dask: wall {x['wall_s']:.2f} s vs {b['wall_s']:.2f} s "
        f"({b['wall_s'] / x['wall_s']:.1f}x), tasks {x['tasks']} vs {b['tasks']}, peak memory "
        f"{x['peak_rss_tree'] / MIB:.0f} vs {b['peak_rss_tree'] / MIB:.0f} MiB, read "
        f"{x['rchar'] / MIB:.0f} vs {b['rchar'] / MIB:.0f} MiB. Single runs: `xrdist bench` "
        "repeats them, with more methods and layouts."
    )
    if png is not None:
        print(f"picture: {png.resolve()}")
    found = bench.problems(rows)
    for problem in found:
        print(f"!!! {problem}")
    return 1 if found else 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--folder",
        default="xrdist-demo-output",
        help="where the stack and the PNG go (default ./xrdist-demo-output)",
    )
    parser.add_argument("--dates", type=int, default=48, help="dates (files), default 48")
    parser.add_argument("--size", type=int, default=512, help="pixels per side, default 512")
    parser.add_argument("--bands", type=int, default=1, help="spectral bands per date, default 1")
    parser.add_argument(
        "--format",
        choices=["netcdf", "cog"],
        default="netcdf",
        help="one netCDF file per date (baseline: xarray) or one Cloud-Optimized GeoTIFF per "
        "date (baseline: rioxarray); default netcdf",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        choices=["local"],
        help="run on a distributed.LocalCluster started for the demo",
    )
    where.add_argument("--scheduler", help="run on an existing cluster at this address")
