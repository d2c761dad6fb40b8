"""``xrdist demo``: a cloud-free median composite of a satellite stack, xrdist against
plain xarray + dask on the same files.

1. Writes a synthetic stack (:mod:`xrdist.synthetic`) or reuses it.
2. Shows xrdist's plan, computes the composite with a progress bar, and writes a PNG of a
   cloudy date beside the composite.
3. Runs each method in a fresh process (so memory and I/O are its own) and prints a table:
   wall time, peak memory of the whole process tree (workers included), tasks of the
   optimised graph, bytes read from files, files opened and whether results agree.

Methods: ``xrdist`` = ``xrdist.open_mfdataset(paths, chunks=CHUNKS)``; ``xarray`` =
``xr.open_mfdataset(paths, chunks={}).chunk(CHUNKS)``; then ``.refl.median("time")``.
Wall time is open + graph + compute; the median kernel is compiled (or loaded from numba's
cache in the output folder) before timing, since both methods share it. Bytes read are
counted from open to result (``read_chars`` of the processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MIB = 1024**2


def chunks_for(size: int) -> dict[str, int]:
    return {"time": -1, "y": min(256, size), "x": min(256, size)}


# -- one method, in a fresh process -------------------------------------------------------


def _client(cluster: str | None, scheduler: str | None, stack: ExitStack) -> Any:
    if scheduler:
        from distributed import Client

        return stack.enter_context(Client(scheduler))
    if cluster == "local":
        from distributed import Client, LocalCluster

        local = stack.enter_context(
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0")
        )
        return stack.enter_context(Client(local))
    return None


def run_method(
    method: str, paths: list[str], size: int, cluster: str | None, scheduler: str | None
) -> dict[str, Any]:
    """Open, plan and compute the median with one method; measured in this process."""
    import dask
    import xarray as xr

    import xrdist

    chunks = chunks_for(size)
    with ExitStack() as stack:
        client = _client(cluster, scheduler, stack)
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        _warm_up()  # compile the median kernel before timing (both methods share it)
        if client is not None:
            client.run(_warm_up)
        read_before = _read_bytes() + (sum(client.run(_read_bytes).values()) if client else 0)
        t0 = time.perf_counter()
        if method == "xrdist":
            ds = xrdist.open_mfdataset(paths, chunks=chunks)
        else:
            ds = xr.open_mfdataset(paths, engine="netcdf4", chunks={}).chunk(chunks)
        median = ds.refl.median("time")
        tasks = len(dask.optimize(median.data)[0].__dask_graph__())
        values = median.compute() if client is None else client.compute(median).result()
        wall = time.perf_counter() - t0
        opens = (
            sum(i.opens for i in client.run(xrdist.cache_info).values())
            if client is not None
            else xrdist.cache_info().opens
        )
        read_after = _read_bytes() + (sum(client.run(_read_bytes).values()) if client else 0)
        read = read_after - read_before
        dashboard = client.dashboard_link if client is not None else None
    return {
        "method": method,
        "dashboard": dashboard,
        "wall": wall,
        "tasks": tasks,
        "read": read,
        "opens": opens if method == "xrdist" else None,
        "checksum": float(np.nansum(values)),
    }


def _read_bytes() -> int:
    return psutil.Process().io_counters().read_chars


def _warm_up() -> None:
    """Compile (or load from numba's disk cache) the nan-median kernel xarray uses."""
    import h5py  # noqa: F401  (imported here so that bytes read count data, not modules)
    import netCDF4  # noqa: F401
    import xarray as xr

    import xrdist.formats.h5pylib
    import xrdist.formats.netcdf4lib  # noqa: F401

    xr.DataArray(np.ones((3, 2, 2), np.float32), dims=("time", "y", "x")).median("time")


def measure(method: str, args: argparse.Namespace, paths: list[str]) -> dict[str, Any]:
    """Run ``method`` in a fresh interpreter; sample the process tree's memory."""
    argv = [
        sys.executable,
        "-m",
        "xrdist.demo",
        "--child",
        method,
        "--folder",
        str(args.folder),
        "--dates",
        str(args.dates),
        "--size",
        str(args.size),
    ]
    if args.cluster:
        argv += ["--cluster", args.cluster]
    if args.scheduler:
        argv += ["--scheduler", args.scheduler]
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(Path(args.folder).parent / ".numba-cache"))
    env.setdefault("NUMBAGG_CACHE", "1")
    proc = psutil.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    base = peak = 0
    while proc.poll() is None:
        rss = _tree_rss(proc)
        base = base or rss
        peak = max(peak, rss)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{method} failed:\n{err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak"] = peak
    return result


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


# -- the demo ---------------------------------------------------------------------------


def composite_png(paths: list[str], size: int, out: Path) -> Path | None:
    """Compute the composite with xrdist (progress bar) and plot it beside a cloudy date."""
    from dask.diagnostics import ProgressBar

    import xrdist

    ds = xrdist.open_mfdataset(paths, chunks=chunks_for(size))
    with ProgressBar(minimum=0.5):
        composite = ds.refl.median("time").compute()
    cloudy = int(ds.refl.isnull().sum(("y", "x")).argmax("time"))
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
        (axes[0], ds.refl.isel(time=cloudy).values, f"one date ({date}): clouds are gaps"),
        (axes[1], composite.values, f"median of {len(paths)} dates: cloud-free"),
    ]:
        shown = ax.imshow(image, vmin=0.0, vmax=0.6, cmap="viridis")
        ax.set_title(title)
        ax.set_axis_off()
    fig.colorbar(shown, ax=axes, shrink=0.8, label="reflectance")
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    reference = rows[0]["checksum"]
    lines = [
        "| method | wall s | peak MiB (process tree) | tasks | read MiB | files opened | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = abs(r["checksum"] - reference) <= 1e-6 * max(1.0, abs(reference))
        lines.append(
            f"| {r['method']} | {r['wall']:.2f} | {r['peak'] / MIB:.0f} | {r['tasks']} | "
            f"{r['read'] / MIB:.0f} | {r['opens'] if r['opens'] is not None else '-'} | "
            f"{'same' if same else 'DIFFERS'} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from xrdist.mfdataset import plan
    from xrdist.synthetic import write_stack

    folder = Path(args.folder)
    print(
        f"stack: {args.dates} dates of {args.size}x{args.size}, one netCDF file per date, "
        f"tiled {min(256, args.size)}x{min(256, args.size)}, clouds as nodata -> {folder}"
    )
    paths = write_stack(folder / "stack", dates=args.dates, size=args.size)
    args.folder = folder / "stack"
    print(
        f"\nxrdist's plan for chunks {chunks_for(args.size)}:\n"
        f"{plan(paths, chunks=chunks_for(args.size))}\n"
    )
    png = composite_png(paths, args.size, folder / "composite.png")
    print(
        "\nmeasuring each method in a fresh process"
        + (f" on {args.cluster or args.scheduler}" if args.cluster or args.scheduler else "")
        + " ..."
    )
    rows = []
    for method in ("xrdist", "xarray"):
        rows.append(measure(method, args, paths))
        if rows[-1].get("dashboard"):
            print(f"  {method}: dask dashboard was at {rows[-1]['dashboard']}")
    print("\n" + table(rows))
    x, b = rows
    print(
        f"\nxrdist against xarray + dask: wall {x['wall']:.2f} s vs {b['wall']:.2f} s "
        f"({b['wall'] / x['wall']:.1f}x), tasks {x['tasks']} vs {b['tasks']}, peak memory "
        f"{x['peak'] / MIB:.0f} vs {b['peak'] / MIB:.0f} MiB, read {x['read'] / MIB:.0f} vs "
        f"{b['read'] / MIB:.0f} MiB. Single runs: see benchmarks/ for repeated measurements."
    )
    if png is not None:
        print(f"picture: {png.resolve()}")
    return (
        0
        if all(abs(r["checksum"] - x["checksum"]) <= 1e-6 * abs(x["checksum"]) for r in rows)
        else 1
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--folder",
        default="xrdist-demo-output",
        help="where the stack and the PNG go (default ./xrdist-demo-output)",
    )
    parser.add_argument("--dates", type=int, default=48, help="dates (files), default 48")
    parser.add_argument("--size", type=int, default=512, help="pixels per side, default 512")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        choices=["local"],
        help="run on a distributed.LocalCluster started for the demo",
    )
    where.add_argument("--scheduler", help="run on an existing cluster at this address")


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    paths = sorted(str(p) for p in Path(args.folder).glob("scene_*.nc"))
    result = run_method(args.child, paths, args.size, args.cluster, args.scheduler)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(_child_main(sys.argv[1:]))
