"""``xrdist bench``: the median over time of a satellite stack, xrdist against xarray's
readers, each method in a fresh process; and the measuring machinery ``xrdist demo`` uses.

A synthetic stack (:func:`xrdist.synthetic.write_stack`: one file per date, ``uint16``
reflectance with ``scale_factor=1e-4`` and nodata 0, about a fifth of each date clouded
to nodata) is written once per layout and cached in ``--workdir``::

    tiles       netCDF-4, zlib (level 1) + shuffle, chunks (1, 256, 256)
    whole       netCDF-4, zlib (level 1) + shuffle, one chunk per date
    contiguous  netCDF-4, uncompressed, contiguous
    cog         Cloud-Optimized GeoTIFFs, deflate + predictor, 256 x 256 tiles, overviews

All four hold the same values. Each (layout, method) runs in a fresh subprocess that opens
the stack with chunks ``{"time": -1, "y": 256, "x": 256}`` (and ``band: 1`` for COGs),
computes ``.median("time")`` of the variable (``refl``, or ``band_data`` for COGs) and
reports times, tasks, bytes read and a checksum. Methods (see :data:`METHODS`)::

    xrdist          xrdist.open_mfdataset(paths, chunks=CHUNKS), threaded scheduler
    netcdf4         xr.open_mfdataset(paths, engine="netcdf4", chunks={}).chunk(CHUNKS)
    h5netcdf        the same with engine="h5netcdf"
    rioxarray       xr.open_mfdataset(paths, engine="rasterio", combine="nested",
                        concat_dim="time", chunks={}).chunk(CHUNKS) (COGs)
    netcdf4-p2p     the netcdf4 open on a LocalCluster(n_workers=2,
                        threads_per_worker=1), rechunked with P2P
    xrdist-cluster  xrdist on the same cluster (P2P where its plan rechunks)
    odc-stac, stackstac  COGs as STAC items, only where the package is installed

The parent samples the resident memory of each child's whole process tree (the child and
its descendants, so a cluster's workers too) every 50 ms, prints one table per layout,
and fails loudly if the results of a layout disagree.

What the columns measure
------------------------
wall s
    open + graph construction + compute, timed inside the child (interpreter start-up,
    imports, kernel warm-up and cluster start-up excluded); with ``--repeat N`` the median.
open s
    the open call alone.
process s
    the child from start to exit, timed by the parent (imports, warm-up, cluster start).
peak RSS MiB (tree)
    the maximum of the 50 ms samples of the summed RSS of the child and its descendants
    (shared pages are counted once per process). ``base_rss_tree`` in the JSON is the
    same sum just before the open.
tasks
    ``len(dask.optimize(median.data)[0].__dask_graph__())`` under the compute's dask
    configuration.
read MiB
    the increase of ``rchar`` (psutil's ``read_chars``) summed over the process tree from
    just before the open to just after the compute: every ``read``-family system call,
    page-cache hits included; on a cluster also the loopback traffic between processes
    and P2P's spill files. The disk-level ``read_bytes`` is in the JSON.
files opened
    files xrdist's handle cache opened (``xrdist.cache_info().opens``); ``-`` for others.
CPU s (tree), others' CPU %
    CPU time of the child's process tree, and the CPU time the rest of the machine used
    meanwhile as a share of all cores over ``process s``: well above 0 means that row's
    timings were disturbed by other work on the machine.
result
    ``same`` if the checksum (``np.nansum`` in float64) and the number of all-NaN pixels
    agree with the layout's first method to a relative 1e-6; the JSON also has a digest of
    the result's bytes (bitwise identity).

Notes
-----
``.median("time")`` on a dask array runs ``dask.array.nanmedian``, which uses
``numbagg.nanmedian`` when numbagg is installed and ``np.nanmedian`` otherwise, so every
method uses the same kernel. numba compiles numbagg's kernel in every fresh process (about
15 s on 2 cores), so the parent first compiles it once into numba's disk cache
(``NUMBAGG_CACHE=1``, ``NUMBA_CACHE_DIR=<workdir>/numba-cache``) and each child (and each
worker) runs the kernel once on a tiny array before the timed part.

This module runs its children as ``python -P -c`` on this file (not ``-m xrdist.bench``),
so that ``--xrdist-ref`` can benchmark an older xrdist that has no such module. Its
top-level imports are therefore the standard library, numpy and psutil only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

LAYOUTS = ("tiles", "whole", "contiguous", "cog")
TILE = 256
SAMPLE_SECONDS = 0.05
MIB = 1024**2
CLUSTER_CONFIG = {"array.rechunk.method": "p2p", "optimization.fuse.active": False}
PACKAGES = (
    "xrdist",
    "xarray",
    "dask",
    "distributed",
    "numpy",
    "h5py",
    "netCDF4",
    "h5netcdf",
    "tifffile",
    "imagecodecs",
    "rasterio",
    "rioxarray",
    "odc-stac",
    "stackstac",
    "psutil",
    "numbagg",
    "numba",
)


@dataclass(frozen=True)
class Method:
    """One way of reading a stack: ``reader`` opens it, on a cluster or not."""

    name: str
    reader: str
    formats: tuple[str, ...]
    cluster: bool
    code: str
    requires: str | None = None  # a module that must be importable
    default: bool = True  # run when --methods is not given (and installed)

    def available(self) -> bool:
        if self.requires is None:
            return True
        try:
            return importlib.util.find_spec(self.requires) is not None
        except ImportError:  # the parent package (``odc`` of ``odc.stac``) is missing
            return False


METHODS = {
    m.name: m
    for m in (
        Method(
            "xrdist",
            "xrdist",
            ("netcdf", "cog"),
            False,
            "xrdist.open_mfdataset(paths, chunks=CHUNKS)",
        ),
        Method(
            "netcdf4",
            "netcdf4",
            ("netcdf",),
            False,
            'xr.open_mfdataset(paths, engine="netcdf4", chunks={}).chunk(CHUNKS)',
        ),
        Method(
            "h5netcdf",
            "h5netcdf",
            ("netcdf",),
            False,
            'xr.open_mfdataset(paths, engine="h5netcdf", chunks={}).chunk(CHUNKS)',
        ),
        Method(
            "rioxarray",
            "rioxarray",
            ("cog",),
            False,
            'xr.open_mfdataset(paths, engine="rasterio", combine="nested", '
            'concat_dim="time", chunks={}).chunk(CHUNKS)',
        ),
        Method(
            "rioxarray-nolock",
            "rioxarray-nolock",
            ("cog",),
            False,
            "the same with lock=False: parallel reads, a new GDAL handle for each",
            default=False,
        ),
        Method(
            "netcdf4-p2p",
            "netcdf4",
            ("netcdf",),
            True,
            "netcdf4 on a LocalCluster(n_workers=2, threads_per_worker=1), P2P rechunk",
        ),
        Method(
            "xrdist-cluster",
            "xrdist",
            ("netcdf", "cog"),
            True,
            "xrdist on a LocalCluster(n_workers=2, threads_per_worker=1), P2P if it rechunks",
        ),
        Method(
            "odc-stac",
            "odc-stac",
            ("cog",),
            False,
            'odc.stac.load(items, bands=["data"], chunks={"y": 256, "x": 256}), then '
            "nodata to NaN and scaled",
            requires="odc.stac",
        ),
        Method(
            "stackstac",
            "stackstac",
            ("cog",),
            False,
            'stackstac.stack(items, assets=["data"], chunksize=256, rescale=True, '
            "snap_bounds=False)",
            requires="stackstac",
        ),
    )
}
#: Methods whose wall time is the "best xarray" reference of the ratio column.
BASELINES = ("netcdf4", "h5netcdf", "rioxarray", "rioxarray-nolock")


def file_format(layout: str) -> str:
    return "cog" if layout == "cog" else "netcdf"


def variable(fmt: str) -> str:
    return "band_data" if fmt == "cog" else "refl"


def chunks_for(size: int, fmt: str = "netcdf", bands: int = 1) -> dict[str, int]:
    """The target chunks: every date, one band, tile-sized squares. COGs always have a
    ``band`` dimension; netCDF stacks have one when they hold several bands."""
    side = min(TILE, size)
    band = {"band": 1} if fmt == "cog" or bands > 1 else {}
    return {"time": -1, **band, "y": side, "x": side}


def stack_paths(folder: str | os.PathLike[str], fmt: str) -> list[str]:
    suffix = ".tif" if fmt == "cog" else ".nc"
    return sorted(str(p) for p in Path(folder).glob(f"scene_*{suffix}"))


def write_stack(folder: Path, layout: str, dates: int, size: int) -> tuple[list[str], float]:
    """The stack of ``layout`` in ``folder`` (written unless complete there) and the seconds
    spent writing it."""
    from xrdist.synthetic import write_stack as write

    fmt = file_format(layout)
    start = time.perf_counter()
    layout = "tiles" if fmt == "cog" else layout
    paths = write(folder, dates=dates, size=size, layout=layout, tile=TILE, file_format=fmt)
    return paths, time.perf_counter() - start


def methods_for(layout: str, methods: list[str]) -> list[str]:
    fmt = file_format(layout)
    return [m for m in methods if fmt in METHODS[m].formats]


# -- one run, inside the fresh process -----------------------------------------------------


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(proc: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for p in _tree(proc):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


def tree_io(proc: psutil.Process) -> dict[int, tuple[int, int]]:
    """pid -> (rchar, read_bytes) for the process and its descendants."""
    out = {}
    for p in _tree(proc):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            io = p.io_counters()
            out[p.pid] = (io.read_chars, io.read_bytes)
    return out


def io_delta(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> list[int]:
    """Increase of (rchar, read_bytes) summed over processes (new ones count whole)."""
    total = [0, 0]
    for pid, counters in after.items():
        base = before.get(pid, (0, 0))
        for k in range(2):
            total[k] += counters[k] - base[k]
    return total


def _own_io() -> dict[int, tuple[int, int]]:
    return tree_io(psutil.Process())


def _import_readers() -> None:
    """Import every reader's modules, so that the bytes read count data, not modules."""
    for name in (
        "h5py",
        "netCDF4",
        "tifffile",
        "imagecodecs",
        "rasterio",
        "rioxarray",
        "xrdist.formats.h5pylib",
        "xrdist.formats.netcdf4lib",
        "xrdist.formats.tifflib",
    ):
        with contextlib.suppress(ImportError):
            __import__(name)


def warm_kernel() -> str:
    """Run the median kernel once on a tiny array (compiles it if it is JIT-compiled)."""
    import dask.array as da

    _import_readers()
    tiny = da.zeros((4, 8, 8), chunks=(4, 4, 4), dtype=np.float32)
    da.nanmedian(tiny, axis=0).compute(scheduler="threads")
    return "ok"


def warm_up(client: Any) -> float:
    """Seconds spent warming the median kernel in this process and on each worker."""
    start = time.perf_counter()
    warm_kernel()
    if client is not None:
        workers = list(client.scheduler_info()["workers"])
        futures = [
            client.submit(warm_kernel, workers=[w], allow_other_workers=False, pure=False)
            for w in workers
        ]
        client.gather(futures)
    return time.perf_counter() - start


def _stac_items(paths: list[str]) -> list[Any]:
    """The COGs as STAC items (asset ``data``, projection and raster extensions), as a STAC
    API would serve them."""
    import pystac
    import tifffile

    items = []
    for path in paths:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            height, width = page.shape[:2]
            sx, sy, _ = page.tags[33550].value
            x0, y0 = page.tags[33922].value[3:5]
            when = page.tags[306].value
        transform = [sx, 0.0, x0, 0.0, -sy, y0, 0.0, 0.0, 1.0]
        x1, y1 = x0 + sx * width, y0 - sy * height
        date = f"{when[:4]}-{when[5:7]}-{when[8:10]}T{when[11:]}Z"
        item = pystac.Item(
            id=Path(path).stem,
            geometry=None,
            bbox=None,
            datetime=pystac.utils.str_to_datetime(date),
            properties={"proj:epsg": 32633, "proj:shape": [height, width]},
            stac_extensions=[
                "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
                "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            ],
        )
        item.add_asset(
            "data",
            pystac.Asset(
                href=path,
                media_type=pystac.MediaType.COG,
                roles=["data"],
                extra_fields={
                    "proj:transform": transform,
                    "proj:bbox": [x0, y1, x1, y0],
                    "raster:bands": [
                        {"data_type": "uint16", "nodata": 0, "scale": 1e-4, "offset": 0}
                    ],
                },
            ),
        )
        items.append(item)
    return items


def open_stack(reader: str, paths: list[str], chunks: dict[str, int]) -> Any:
    """The stack as a dataset in ``chunks``, the way each reader's users would write it."""
    import xarray as xr

    if reader == "xrdist":
        import xrdist

        return xrdist.open_mfdataset(paths, chunks=chunks)
    if reader in ("netcdf4", "h5netcdf"):
        return xr.open_mfdataset(paths, engine=reader, chunks={}).chunk(chunks)
    if reader in ("rioxarray", "rioxarray-nolock"):
        lock = {"lock": False} if reader == "rioxarray-nolock" else {}
        ds = xr.open_mfdataset(
            paths, engine="rasterio", combine="nested", concat_dim="time", chunks={}, **lock
        )
        return ds.chunk(chunks)
    side = chunks["x"]
    if reader == "odc-stac":
        import odc.stac

        ds = odc.stac.load(_stac_items(paths), bands=["data"], chunks={"y": side, "x": side})
        data = ds["data"]
        decoded = data.where(data != 0).astype(np.float32) * np.float32(1e-4)
        return decoded.expand_dims(band=[1], axis=1).to_dataset(name="band_data")
    if reader == "stackstac":
        import stackstac

        items = _stac_items(paths)
        data = stackstac.stack(
            items, assets=["data"], chunksize=side, rescale=True, snap_bounds=False
        )  # snapped bounds add a row and a column of NaN
        return data.astype(np.float32).to_dataset(name="band_data")
    raise ValueError(f"unknown reader {reader!r}")


def _client(cluster: str | None, stack: contextlib.ExitStack) -> Any:
    if cluster is None:
        return None
    from distributed import Client, LocalCluster

    if cluster == "local":
        local = stack.enter_context(
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=40,
            )
        )
        client = stack.enter_context(Client(local))
        client.wait_for_workers(2)
        return client
    return stack.enter_context(Client(cluster))


def _remote_io(client: Any, cluster: str | None) -> int:
    """rchar of the workers of a remote cluster (a local one is in the process tree)."""
    if client is None or cluster == "local":
        return 0
    return sum(c[0] for w in client.run(_own_io).values() for c in w.values())


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Open, median, compute, in this process; everything a parent compares, as a dict.

    ``spec``: ``method``, ``reader``, ``folder``, ``format``, ``chunks``, ``cluster``
    (``None``, ``"local"`` or a scheduler address), ``warm`` and ``xrdist_options``
    (set in this process and the cluster's workers).
    """
    import dask
    import xarray as xr

    import xrdist  # imported before the baseline of the I/O counters

    xr.backends.list_engines()  # load every backend's modules before measuring
    fmt, chunks, cluster = spec["format"], spec["chunks"], spec.get("cluster")
    paths = stack_paths(spec["folder"], fmt)
    me = psutil.Process()
    out: dict[str, Any] = {
        "method": spec["method"],
        "files": len(paths),
        "xrdist_source": os.path.dirname(os.path.abspath(xrdist.__file__)),
    }
    config: dict[str, Any] = {"scheduler": "threads"}
    with contextlib.ExitStack() as stack:
        start = time.perf_counter()
        client = _client(cluster, stack)
        if client is not None:
            out["cluster_s"] = time.perf_counter() - start
            out["dashboard"] = client.dashboard_link
            # P2P cannot run through low-level task fusion on some dask versions: switch
            # fusion off for every cluster run so that they run under one configuration.
            config = dict(CLUSTER_CONFIG)
        stack.enter_context(dask.config.set(config))
        options = spec.get("xrdist_options") or {}
        if options:
            stack.enter_context(xrdist.set_options(**options))
            if client is not None:
                client.run(_set_xrdist_options, **options)
        if spec.get("warm", True):
            out["warm_up_s"] = warm_up(client)
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        out["base_rss_tree"] = tree_rss(me)
        io_before, remote_before = tree_io(me), _remote_io(client, cluster)
        start = time.perf_counter()
        ds = open_stack(spec["reader"], paths, chunks)
        opened = time.perf_counter()
        median = ds[variable(fmt)].median("time")
        out["decoded_dtype"] = str(ds[variable(fmt)].dtype)
        result = client.compute(median).result() if client is not None else median.compute()
        done = time.perf_counter()
        rchar, read_bytes = io_delta(io_before, tree_io(me))
        rchar += _remote_io(client, cluster) - remote_before
        out["tasks"] = len(dask.optimize(median.data)[0].__dask_graph__())
        if spec["reader"] == "xrdist":
            out["opens"] = (
                sum(i.opens for i in client.run(xrdist.cache_info).values())
                if client is not None
                else xrdist.cache_info().opens
            )
        plan = ds.encoding.get("xrdist_plan")
        if plan is not None:
            v = plan.variables[variable(fmt)]
            out["plan"] = {
                "strategy": v.strategy,
                "rechunk_method": v.rechunk_method,
                "read_chunks": [max(c) for c in v.read_chunks],
                "amplification": v.amplification,
                "requested_amplification": v.requested_amplification,
                "read_tasks": v.tasks,
            }
        out["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if client is not None:
            out["workers"] = len(client.scheduler_info()["workers"])
    values = np.asarray(result.values)
    nan = np.isnan(values)
    canonical = np.where(nan, np.float32(np.nan), values).astype(values.dtype)
    out.update(
        open_s=opened - start,
        compute_s=done - opened,
        wall_s=done - start,
        rchar=rchar,
        read_bytes=read_bytes,
        checksum=float(np.nansum(values, dtype=np.float64)),
        nan_count=int(nan.sum()),
        digest=hashlib.sha1(canonical.tobytes()).hexdigest()[:16],
        shape=list(values.shape),
        dtype=str(values.dtype),
        config=config,
    )
    return out


def _child_main(argv: list[str]) -> int:
    if argv[:1] == ["--warm"]:
        warm_kernel()
        return 0
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    result = run_one(json.loads(argv[1]))
    sys.stdout.write(json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


# -- the parent: spawn, sample, tabulate ---------------------------------------------------


#: Runs this file in a fresh interpreter (``-P``: the working directory is not put on
#: ``sys.path``, so a checkout there cannot shadow the xrdist under test).
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


def child_command(*args: str, script: str | None = None) -> list[str]:
    """``script`` (default this file) run in a fresh interpreter with ``args``."""
    return [sys.executable, "-P", "-c", _BOOT, script or os.path.abspath(__file__), *args]


def child_env(numba_cache: str | os.PathLike[str] | None, pythonpath: str | None = None):
    """The children's environment: numba's on-disk cache for numbagg's kernel (unless
    ``numba_cache`` is None) and ``pythonpath`` first on the path."""
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    if numba_cache is not None:
        env.setdefault("NUMBAGG_CACHE", "1")
        env.setdefault("NUMBA_CACHE_DIR", str(numba_cache))
    return env


def fill_jit_cache(env: dict[str, str]) -> float | None:
    """Compile numbagg's median kernel once, in a process of its own, so that the children
    (and a cluster's workers, which start at once) only load it from numba's disk cache.
    ``None`` (and nothing run) without numbagg: numpy's kernel needs no compiling."""
    if importlib.util.find_spec("numbagg") is None:
        return None
    start = time.perf_counter()
    subprocess.run(child_command("--warm"), env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def _kill_tree(proc: psutil.Process) -> None:
    for p in reversed(_tree(proc)):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children and their reaped descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting for I/O)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def spawn(
    spec: dict[str, Any], env: dict[str, str], timeout: float = 1800.0, script: str | None = None
) -> dict[str, Any]:
    """Run one method (:func:`run_one`) in a fresh interpreter, sampling the RSS of its
    process tree; the child's record plus what only the parent can see."""
    cmd = child_command("--child", json.dumps(spec), script=script)
    with (
        tempfile.TemporaryFile("w+") as out,
        tempfile.TemporaryFile("w+") as err,
        tempfile.TemporaryDirectory(prefix="xrdist-bench-descriptions-") as descriptions,
    ):
        # every run opens cold: no file descriptions left on disk by an earlier run
        env = {**env, "XRDIST_CACHE_DIR": descriptions}
        cpu_before, busy_before = _children_cpu(), _busy_cpu()
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        proc = psutil.Process(popen.pid)
        peak, samples, timed_out = 0, 0, False
        while popen.poll() is None:
            peak = max(peak, tree_rss(proc))
            samples += 1
            if time.perf_counter() - start > timeout:
                timed_out = True
                _kill_tree(proc)
                popen.wait()
                break
            time.sleep(SAMPLE_SECONDS)
        elapsed = time.perf_counter() - start
        tree_cpu, busy = _children_cpu() - cpu_before, _busy_cpu() - busy_before
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    record: dict[str, Any] = {"method": spec["method"]}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if popen.returncode == 0 and lines:
        record.update(json.loads(lines[-1]))
        record["ok"] = True
    else:
        record["ok"] = False
        record["error"] = (
            f"timed out after {timeout:g} s" if timed_out else f"exit code {popen.returncode}"
        )
        record["stderr"] = stderr[-6000:]
        record["stdout"] = stdout[-2000:]
    others = max(0.0, busy - tree_cpu)
    record.update(
        process_s=elapsed,
        peak_rss_tree=peak,
        rss_samples=samples,
        tree_cpu_s=tree_cpu,
        other_cpu_s=others,
        other_cpu_share=others / (elapsed * (os.cpu_count() or 1)),
    )
    return record


NUMERIC = (
    "wall_s",
    "open_s",
    "compute_s",
    "process_s",
    "cluster_s",
    "warm_up_s",
    "base_rss_tree",
    "peak_rss_tree",
    "rchar",
    "read_bytes",
    "tree_cpu_s",
    "other_cpu_s",
    "other_cpu_share",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of the numeric fields over repeats; the rest from the last successful run."""
    ok = [r for r in runs if r["ok"]]
    if not ok:
        return dict(runs[-1], runs=runs)
    out = dict(ok[-1])
    for key in NUMERIC:
        values = [r[key] for r in ok if key in r]
        if values:
            out[key] = statistics.median(values)
    out["repeat_consistent"] = len({(r["checksum"], r["nan_count"]) for r in ok}) == 1
    out["ok"] = len(ok) == len(runs)
    out["runs"] = runs
    return out


def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same result: checksums to a relative 1e-6 and the same number of all-NaN pixels."""
    return math.isclose(a["checksum"], b["checksum"], rel_tol=1e-6) and (
        a["nan_count"] == b["nan_count"]
    )


def problems(results: list[dict[str, Any]]) -> list[str]:
    """Failures and disagreements among one layout's results."""
    out = []
    for r in results:
        if "checksum" not in r:
            out.append(f"{r['method']} FAILED: {r.get('error')}")
            continue
        if not r["ok"]:
            out.append(f"{r['method']}: some repeats FAILED")
        if not r.get("repeat_consistent", True):
            out.append(f"{r['method']}: repeats gave different results")
    good = [r for r in results if "checksum" in r]
    for r in good[1:]:
        if not agree(r, good[0]):
            out.append(
                f"MISMATCH: {r['method']} checksum {r['checksum']!r} / {r['nan_count']} NaN "
                f"vs {good[0]['method']} {good[0]['checksum']!r} / {good[0]['nan_count']} NaN"
            )
    return out


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


#: Table columns: header -> cell of a result (``ref``: the layout's first result,
#: ``best``: the best baseline wall time or None).
COLUMNS = {
    "method": lambda r, ref, best: r["label"] if "label" in r else r["method"],
    "wall s": lambda r, ref, best: _f(r.get("wall_s")),
    "open s": lambda r, ref, best: _f(r.get("open_s")),
    "process s": lambda r, ref, best: _f(r["process_s"]),
    "peak RSS MiB (process tree)": lambda r, ref, best: f"{r['peak_rss_tree'] / MIB:.0f}",
    "tasks": lambda r, ref, best: str(r.get("tasks", "-")),
    "read MiB": lambda r, ref, best: _f(r["rchar"] / MIB, 0) if "rchar" in r else "-",
    "files opened": lambda r, ref, best: str(r.get("opens", "-")),
    "wall / best xarray": lambda r, ref, best: (
        f"{r['wall_s'] / best:.2f}" if best and "wall_s" in r else "-"
    ),
    "CPU s (tree)": lambda r, ref, best: _f(r["tree_cpu_s"], 1),
    "others' CPU %": lambda r, ref, best: f"{100 * r['other_cpu_share']:.0f}",
    "result": lambda r, ref, best: (
        f"FAILED ({r.get('error')})"
        if "checksum" not in r
        else "same"
        if agree(r, ref)
        else "DIFFERS"
    ),
}
BENCH_COLUMNS = tuple(COLUMNS)
DEMO_COLUMNS = (
    "method",
    "wall s",
    "peak RSS MiB (process tree)",
    "tasks",
    "read MiB",
    "files opened",
    "result",
)


def table(results: list[dict[str, Any]], columns: tuple[str, ...] = BENCH_COLUMNS) -> str:
    """A markdown table of one layout's results."""
    ref = next((r for r in results if "checksum" in r), None)
    base = [r["wall_s"] for r in results if r["method"] in BASELINES and "wall_s" in r]
    best = min(base) if base else None
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        lines.append("| " + " | ".join(COLUMNS[c](r, ref, best) for c in columns) + " |")
    return "\n".join(lines)


#: Warnings of the libraries' own upkeep, left out of the notes (they stay in the JSON).
QUIET_WARNINGS = ("DeprecationWarning", "PendingDeprecationWarning", "FutureWarning")


def notes(results: list[dict[str, Any]]) -> list[str]:
    out = []
    sources = sorted({r["xrdist_source"] for r in results if "xrdist_source" in r})
    if sources:
        out.append(f"xrdist imported from {', '.join(sources)}")
    digests = {r["digest"] for r in results if "digest" in r}
    if digests:
        same = "bitwise identical" if len(digests) == 1 else f"{len(digests)} distinct results"
        out.append(f"results: {same} (digest of the result's bytes)")
    for r in results:
        plan = r.get("plan")
        if plan:
            how = plan["strategy"] + (
                f" ({plan['rechunk_method']})" if plan["rechunk_method"] else ""
            )
            out.append(
                f"{r['method']} plan: {how}, read chunks {plan['read_chunks']}, "
                f"{plan['read_tasks']} read tasks, amplification {plan['amplification']:.2f}"
            )
        extra = []
        if "cluster_s" in r:
            extra.append(f"cluster start {r['cluster_s']:.2f} s")
        if "warm_up_s" in r:
            extra.append(f"kernel warm-up {r['warm_up_s']:.2f} s")
        if extra:
            out.append(f"{r['method']}: {', '.join(extra)} (in process s, not in wall s)")
        for w in r.get("warnings", []):
            if not w.startswith(QUIET_WARNINGS):
                out.append(f"{r['method']} warned: {w[:300]}")
    return out


def failure_details(results: list[dict[str, Any]]) -> str:
    text = []
    for r in results:
        for run in r.get("runs", [r]):
            if not run["ok"]:
                text.append(f"--- {run['method']} stderr (tail) ---\n{run.get('stderr', '')}")
    return "\n".join(text)


# -- provenance ----------------------------------------------------------------------------


def xrdist_state() -> str:
    """Where ``import xrdist`` finds the package (without importing it), and its git commit
    (and whether it has uncommitted changes) if it is in a git work tree."""
    directory = _xrdist_directory()
    if directory is None:
        return "xrdist not found"
    return f"{directory}{_git_state(directory)}"


def xrdist_fingerprint() -> str:
    """The package's files as git sees them (tree, uncommitted changes), to tell whether
    xrdist changed during a run; commits elsewhere in the repository do not count."""
    directory = _xrdist_directory()
    if directory is None:
        return ""
    try:
        tree = _git(directory, "rev-parse", "HEAD:./")
        changes = _git(directory, "diff", "HEAD", "--", ".")
        untracked = _git(directory, "ls-files", "--others", "--exclude-standard", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return directory
    digest = hashlib.sha1((changes + untracked).encode()).hexdigest()[:12]
    return f"{directory} {tree} {digest}"


def _xrdist_directory() -> str | None:
    spec = importlib.util.find_spec("xrdist")
    if spec is None or spec.origin is None:
        return None
    return os.path.dirname(spec.origin)


def _git(directory: str | os.PathLike[str], *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def _git_state(directory: str) -> str:
    """`` (git <commit>[, modified])`` for a package inside a git work tree, else ``""``."""
    try:
        commit = _git(directory, "rev-parse", "--short", "HEAD")
        dirty = _git(directory, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {commit}{', with uncommitted changes' if dirty else ''})"


def snapshot_xrdist(ref: str, workdir: Path) -> Path:
    """Extract the ``xrdist`` package of git ``ref`` (of the repository this module is in)
    into ``workdir/xrdist-<commit>``; the children import it from there (``PYTHONPATH``), so
    edits of the work tree during a run cannot change what is measured."""
    import io
    import tarfile

    repo = Path(__file__).resolve().parent.parent
    commit = _git(repo, "rev-parse", "--verify", f"{ref}^{{commit}}")
    target = workdir / f"xrdist-{commit[:12]}"
    if not (target / "xrdist" / "__init__.py").exists():
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", commit, "xrdist"],
            capture_output=True,
            check=True,
        ).stdout
        partial = target.with_name(target.name + ".partial")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(partial, filter="data")
        partial.rename(target)
    return target


def machine() -> dict[str, Any]:
    """Cores, memory, Python and the versions of the packages that matter."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    with contextlib.suppress(ImportError):
        import netCDF4

        versions["netcdf-c"] = netCDF4.__netcdf4libversion__
    with contextlib.suppress(ImportError):
        import h5py

        versions["hdf5 (h5py)"] = h5py.version.hdf5_version
    with contextlib.suppress(ImportError):
        import rasterio

        versions["gdal (rasterio)"] = rasterio.__gdal_version__
    return {
        "cpu_count": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


def describe_machine(info: dict[str, Any]) -> str:
    cpu = f" ({info['cpu']})" if info.get("cpu") else ""
    return (
        f"{info['cpu_count']} CPUs{cpu}, {info['ram_bytes'] / 1024**3:.1f} GiB RAM, "
        f"Python {info['python']}, {info['platform']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    )


def describe_layout(layout: str, paths: list[str], dates: int, size: int) -> str:
    on_disk = sum(os.path.getsize(p) for p in paths)
    raw = dates * size * size * 2
    side = min(TILE, size)
    storage = {
        "tiles": f"netCDF-4, refl(1, {size}, {size}) uint16, zlib(1)+shuffle, "
        f"chunks (1, {side}, {side})",
        "whole": f"netCDF-4, refl(1, {size}, {size}) uint16, zlib(1)+shuffle, "
        f"chunks (1, {size}, {size})",
        "contiguous": f"netCDF-4, refl(1, {size}, {size}) uint16, uncompressed, contiguous",
        "cog": f"COGs, {size}x{size} uint16, deflate+predictor, {side}x{side} tiles, overviews",
    }[layout]
    return (
        f"`{layout}`: {dates} files, {storage}; {on_disk / MIB:.1f} MiB on disk "
        f"({raw / MIB:.1f} MiB raw)"
    )


# -- the plot ------------------------------------------------------------------------------


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> Path | None:
    """Wall time and peak memory per method, grouped by layout, as a PNG (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'xrdist[demo]')")
        return None
    layouts = list(report["layouts"])
    methods = list(
        dict.fromkeys(r["method"] for v in report["layouts"].values() for r in v["results"])
    )
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    width = 0.8 / max(1, max(len(v["results"]) for v in report["layouts"].values()))
    metrics = [
        ("wall_s", 1.0, "wall time, s (lower is better)"),
        ("peak_rss_tree", 1 / MIB, "peak RSS of the process tree, MiB (lower is better)"),
    ]
    for ax, (key, scale, title) in zip(axes, metrics, strict=True):
        for i, layout in enumerate(layouts):
            rows = [r for r in report["layouts"][layout]["results"] if key in r]
            for j, r in enumerate(rows):
                x = i + width * (j - (len(rows) - 1) / 2)
                ax.bar(x, r[key] * scale, width, color=colours[r["method"]])
        ax.set_xticks(range(len(layouts)), layouts)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in methods]
    fig.legend(handles, methods, loc="outside right center", frameon=False)
    args = report["args"]
    fig.suptitle(
        f"median over time of {args['dates']} dates of {args['size']}x{args['size']}, "
        f"{report['machine']['cpu_count']} cores, fresh process per method"
    )
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)


# -- xrdist bench --------------------------------------------------------------------------


def _split(text: str, allowed: list[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {allowed}")
    return items


def default_methods() -> list[str]:
    return [name for name, m in METHODS.items() if m.default and m.available()]


def _git_part(state: str) -> str:
    """``git abc123`` of ``/some/path (git abc123)``, else the whole text."""
    start = state.rfind("(git ")
    return state[start + 1 : -1] if start >= 0 and state.endswith(")") else state


def markdown(report: dict[str, Any]) -> str:
    """The whole run as markdown: command, machine, one table per layout, notes (without
    this machine's paths, so that it can go on a docs page)."""
    info = report["machine"]
    used = {e.get("command", report["command"]) for e in report["layouts"].values()}
    commands = [c for c in report.get("commands", [report["command"]]) if c in used]
    if len(commands) == 1:
        lines = [f"Command: `{commands[0]}`"]
    else:
        lines = ["Commands (the later ones reran some layouts):", ""]
        for command in commands:
            done = [k for k, e in report["layouts"].items() if e.get("command") == command]
            lines.append(f"- `{command}`: {', '.join(done)}")
    lines += [
        "",
        f"Machine: {describe_machine(info)}",
        "",
        f"xrdist: {info.get('xrdist_git') or _git_part(info['xrdist'])}",
        "",
    ]
    for entry in report["layouts"].values():
        lines += [f"**{entry['description']}**", "", entry["table"], ""]
        lines += [f"- {note}" for note in entry["notes"] if not note.startswith("xrdist imported")]
        lines += [f"- **{p}**" for p in entry["problems"]]
        lines.append("")
    return "\n".join(lines)


def reproduce(args: argparse.Namespace) -> str:
    """The command line that repeats this run (outputs and work folder left out)."""
    words = ["xrdist", "bench", "--dates", str(args.dates), "--size", str(args.size)]
    words += ["--layouts", args.layouts, "--methods", args.methods, "--repeat", str(args.repeat)]
    if args.max_others is not None:
        words += ["--max-others", f"{args.max_others:g}"]
    for flag in ("cold", "no_warm_up", "no_jit_cache"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    if args.xrdist_ref:
        words += ["--xrdist-ref", args.xrdist_ref]
    return " ".join(shlex.quote(w) for w in words)


def _make_output_folders(args: argparse.Namespace) -> None:
    """Make the folders of ``--json``, ``--markdown`` and ``--plot`` before anything runs:
    a path that cannot be written fails now, not after minutes of benchmarks."""
    for option in ("json", "markdown", "plot"):
        path = getattr(args, option, None)
        if path:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise SystemExit(f"--{option} {path}: cannot make its folder: {err}") from err


def run(args: argparse.Namespace) -> int:
    """``xrdist bench``."""
    _make_output_folders(args)
    if args.from_json:
        return write_outputs(merge_reports(args.from_json), args)
    if args.repeat < 1 or args.dates < 2 or args.size < 16:
        raise SystemExit("--repeat must be >= 1, --dates >= 2 and --size >= 16")
    layouts = _split(args.layouts, list(LAYOUTS), "layout")
    methods = _split(args.methods, list(METHODS), "method")
    missing = [m for m in methods if not METHODS[m].available()]
    if missing:
        needs = ", ".join(f"{m} needs {METHODS[m].requires}" for m in missing)
        raise SystemExit(f"not installed: {needs}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    pythonpath = script = None
    if args.xrdist_ref:
        path = snapshot_xrdist(args.xrdist_ref, workdir)
        args.xrdist_ref = path.name[7:]  # the commit, so that the command repeats this run
        pythonpath = str(path)
        if (path / "xrdist" / "bench.py").exists():  # the children's code of that commit too
            script = str(path / "xrdist" / "bench.py")
        info["xrdist"] = f"{path / 'xrdist'} (git {path.name[7:]})"
        info["xrdist_git"] = f"git {path.name[7:]} (`--xrdist-ref {args.xrdist_ref}`)"
    else:
        info["xrdist"] = xrdist_state()
        directory = _xrdist_directory()
        info["xrdist_git"] = _git_state(directory).strip(" ()") if directory else None
    fingerprint = xrdist_fingerprint()
    env = child_env(None if args.no_jit_cache else workdir / "numba-cache", pythonpath)
    command = reproduce(args)
    print(
        f"# median over time: {args.dates} dates x {args.size}^2, chunks "
        f"{chunks_for(args.size)}, repeat {args.repeat}, "
        f"{'cold' if args.cold else 'warm'} page cache"
    )
    print(f"machine: {describe_machine(info)}")
    print(f"xrdist: {info['xrdist']}")
    if not args.no_jit_cache:
        seconds = fill_jit_cache(env)
        if seconds is not None:
            print(f"median kernel compiled into (or found in) numba's cache in {seconds:.1f} s")
    report: dict[str, Any] = {
        "command": command,
        "args": {k: v for k, v in vars(args).items() if k != "run"},
        "machine": info,
        "methods": {m: METHODS[m].code for m in methods},
        "layouts": {},
    }
    all_problems = []
    for layout in layouts:
        fmt = file_format(layout)
        chosen = methods_for(layout, methods)
        skipped = [m for m in methods if m not in chosen]
        folder = workdir / f"{layout}-{args.dates}x{args.size}"
        paths, seconds = write_stack(folder, layout, args.dates, args.size)
        description = describe_layout(layout, paths, args.dates, args.size)
        print(f"\n## {description}")
        print(f"(written in {seconds:.1f} s to {folder})", flush=True)
        if skipped:
            print(f"(not for {fmt} files: {', '.join(skipped)})")
        results = []
        for method in chosen:
            spec = {
                "method": method,
                "reader": METHODS[method].reader,
                "folder": str(folder),
                "format": fmt,
                "chunks": chunks_for(args.size, fmt),
                "cluster": "local" if METHODS[method].cluster else None,
                "warm": not args.no_warm_up,
                "xrdist_options": dict(args.xrdist_option or ()),
            }
            runs = []
            for _ in range(args.repeat):
                run = quiet_run(spec, env, args, script, paths)
                runs.append(dict(run, layout=layout))
            results.append(summarise(runs))
            last = results[-1]
            status = f"{last['wall_s']:.2f} s" if "wall_s" in last else "FAILED"
            print(f"  {method}: {status}", flush=True)
        found = problems(results)
        text = table(results)
        print("\n" + text + "\n")
        for line in notes(results):
            print(f"- {line}")
        for problem in found:
            print(f"!!! {layout}: {problem}")
        details = failure_details(results)
        if details:
            print(details)
        all_problems += [f"{layout}: {p}" for p in found]
        report["layouts"][layout] = {
            "description": description,
            "chunks": chunks_for(args.size, fmt),
            "skipped": skipped,
            "results": results,
            "table": text,
            "notes": notes(results),
            "problems": found,
        }
    firsts = [
        (layout, next((r for r in v["results"] if "checksum" in r), None))
        for layout, v in report["layouts"].items()
    ]
    firsts = [(layout, r) for layout, r in firsts if r is not None]
    if any(not agree(r, firsts[0][1]) for _, r in firsts[1:]):
        print("\nnote: the layouts' results differ from one another (same values expected)")
    if not args.xrdist_ref and xrdist_fingerprint() != fingerprint:
        all_problems.append(
            f"xrdist changed during the run: {info['xrdist']} at the start, "
            f"{xrdist_state()} at the end (--xrdist-ref HEAD measures a fixed snapshot)"
        )
    report["problems"] = all_problems
    return write_outputs(report, args)


def write_outputs(report: dict[str, Any], args: argparse.Namespace) -> int:
    """``--json``, ``--markdown``, ``--plot``; 1 if the report has problems, else 0."""
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nresults: {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report))
        print(f"markdown: {args.markdown}")
    if args.plot:
        written = plot(report, args.plot)
        if written is not None:
            print(f"plot: {written}")
    if report["problems"]:
        print("\n" + "!" * 72)
        for problem in report["problems"]:
            print(f"!!! {problem}")
        print("!" * 72)
        return 1
    return 0


def merge_reports(paths: list[str]) -> dict[str, Any]:
    """Several ``--json`` reports as one: a later report's layouts replace the same layouts
    of earlier ones (to rerun a layout that was disturbed, say). Machine and arguments are
    the first report's."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(reports[0], layouts={}, problems=[], commands=[r["command"] for r in reports])
    for report in reports:
        for layout, entry in report["layouts"].items():
            merged["layouts"][layout] = dict(entry, command=report["command"])
        if report["machine"]["cpu_count"] != merged["machine"]["cpu_count"]:
            raise SystemExit(f"{paths[0]} and another report come from different machines")
    merged["problems"] = [
        f"{layout}: {p}" for layout, e in merged["layouts"].items() for p in e["problems"]
    ]
    return merged


def others_cpu_share(seconds: float = 1.0) -> float:
    """The share of all cores busy over ``seconds`` (this process is idle meanwhile)."""
    before = _busy_cpu()
    time.sleep(seconds)
    return (_busy_cpu() - before) / (seconds * (os.cpu_count() or 1))


def quiet_run(
    spec: dict[str, Any],
    env: dict[str, str],
    args: argparse.Namespace,
    script: str | None,
    paths: list[str],
) -> dict[str, Any]:
    """One run; with ``--max-others PCT``, wait (up to ``--wait`` s) until other processes
    use less than PCT % of the cores, and run again (up to 3 times) when they used more
    during the run, keeping the quietest."""
    tries = []
    for _ in range(3 if args.max_others is not None else 1):
        if args.max_others is not None:
            deadline, told = time.monotonic() + args.wait, False
            while (busy := others_cpu_share() * 100) > args.max_others:
                if time.monotonic() > deadline:
                    print(f"    (ran anyway: {busy:.0f} % of the cores busy after the wait)")
                    break
                if not told:
                    print(f"    (waiting: other processes use {busy:.0f} % of the cores)")
                    told = True
        if args.cold:
            evict_from_page_cache(paths)
        tries.append(spawn(spec, env, args.timeout, script))
        if args.max_others is None or tries[-1]["other_cpu_share"] * 100 <= args.max_others:
            break
    run = min(tries, key=lambda r: r["other_cpu_share"])
    run["tries"] = len(tries)
    return run


def evict_from_page_cache(paths: list[str]) -> None:
    """Ask the kernel to drop the files' cached pages (for ``--cold`` runs)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _set_xrdist_options(**options: Any) -> None:
    """``xrdist.set_options(**options)`` for good, returning nothing (run on workers)."""
    import xrdist

    xrdist.set_options(**options)


def option_setting(text: str) -> tuple[str, Any]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``, VALUE a Python literal (``True``, ``4``,
    ``None``) or else the text itself (``auto``)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return name.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dates", type=int, default=24, help="files (dates), default 24")
    parser.add_argument("--size", type=int, default=512, help="pixels per side, default 512")
    parser.add_argument(
        "--layouts",
        default=",".join(LAYOUTS),
        help=f"comma-separated, of {', '.join(LAYOUTS)} (default all)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(default_methods()),
        help=f"comma-separated, of {', '.join(METHODS)} (default: all installed but "
        "rioxarray-nolock); each layout runs those that read its format",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (median)")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "xrdist-bench"),
        help="where the stacks are written and kept for the next run",
    )
    parser.add_argument("--json", help="write every result and the machine here")
    parser.add_argument("--markdown", help="write the tables (markdown) here")
    parser.add_argument("--plot", help="write a PNG of wall time and peak memory here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument(
        "--max-others",
        type=float,
        metavar="PCT",
        help="on a shared machine: before each run, wait until other processes use less "
        "than PCT %% of the cores, and run again (up to 3 times, keeping the quietest) if "
        "they used more during the run",
    )
    parser.add_argument(
        "--wait", type=float, default=300.0, help="longest wait for --max-others, seconds"
    )
    parser.add_argument(
        "--from-json",
        nargs="+",
        metavar="JSON",
        help="run nothing: write --markdown, --plot (and --json) from earlier --json "
        "reports; a later report's layouts replace the same layouts of earlier ones",
    )
    parser.add_argument(
        "--cold", action="store_true", help="drop the stack from the page cache before each run"
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="do not run the median kernel once before timing (its compilation then counts)",
    )
    parser.add_argument(
        "--no-jit-cache",
        action="store_true",
        help="do not let numba cache numbagg's compiled kernel on disk (under --workdir)",
    )
    parser.add_argument(
        "--xrdist-option",
        action="append",
        type=option_setting,
        metavar="NAME=VALUE",
        help="an xrdist option for the runs of every method (xrdist.set_options: in each "
        "run's process and its cluster's workers), e.g. compiled_reads=True; repeatable",
    )
    parser.add_argument(
        "--xrdist-ref",
        help="benchmark xrdist as of this git commit or branch of its repository (extracted "
        "under --workdir) instead of the package that `import xrdist` finds",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xrdist bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    if "--child" in sys.argv or "--warm" in sys.argv:
        flag = next(i for i, a in enumerate(sys.argv) if a in ("--child", "--warm"))
        sys.exit(_child_main(sys.argv[flag:]))
    sys.exit(main())
