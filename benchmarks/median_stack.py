"""Median over time of a stack of netCDF files: xrdist against xarray's ``open_mfdataset``.

A synthetic satellite stack (one netCDF4 file per date, variable ``refl(time, y, x)`` stored
as uint16 with ``scale_factor=0.0001`` and ``_FillValue=0``, about 20 % of each date's pixels
clouded to the fill value, and a corner outside the swath that is fill on every date) is
written once per on-disk layout and cached in ``--workdir``:

``tiles``       zlib (level 1) + shuffle, chunks (1, 256, 256)
``whole``       zlib (level 1) + shuffle, chunks (1, size, size)
``contiguous``  no compression, contiguous

Each (layout, method) runs in a fresh subprocess that opens the stack with
``chunks={"time": -1, "y": 256, "x": 256}``, computes ``ds.refl.median("time")`` and
reports wall times, the number of tasks of the optimised graph, bytes read and a checksum:

``xrdist``          ``xrdist.open_mfdataset(paths, chunks=...)``, threaded scheduler
``netcdf4``         ``xr.open_mfdataset(paths, engine="netcdf4", chunks={}).chunk(...)``,
                    threaded scheduler
``h5netcdf``        the same with ``engine="h5netcdf"``
``netcdf4-p2p``     the ``netcdf4`` open on a ``LocalCluster(n_workers=2,
                    threads_per_worker=1, processes=True)`` with P2P rechunking
``xrdist-cluster``  xrdist on the same cluster (P2P where its plan rechunks)

The parent samples the resident memory of each child's whole process tree (the child and
all its descendants, so the workers of a cluster too) every 50 ms, prints one markdown
table per layout and fails loudly if the checksums of a layout disagree.

Usage (from the repository root)::

    .venv/bin/python benchmarks/median_stack.py                      # reference: 120 x 1024^2
    .venv/bin/python benchmarks/median_stack.py --dates 24 --size 256  # smoke, 1-2 minutes
    .venv/bin/python benchmarks/median_stack.py --layouts tiles --methods xrdist,netcdf4 \\
        --repeat 3 --json results.json
    .venv/bin/python benchmarks/median_stack.py --xrdist-ref HEAD   # the last commit's xrdist

``--xrdist-ref`` extracts the package as of a commit and benchmarks that, so that edits to
the work tree while the benchmark runs (each run imports xrdist afresh) change nothing.

What the columns measure
------------------------
wall s
    open + graph construction + compute, timed inside the child (interpreter start-up,
    imports, kernel warm-up and cluster start-up excluded); with ``--repeat N`` the
    median of N runs.
open s
    the open call alone.
process s
    the child process from start to exit, timed by the parent (includes imports, the
    kernel warm-up and, for the cluster methods, starting and closing the cluster).
base / peak RSS MiB (tree)
    the sum of the RSS of the child and all its descendants: just before the open (as the
    child sees it) and the maximum of the parent's 50 ms samples. Shared pages (libraries)
    are counted once per process.
tasks
    ``len(dask.optimize(median.data)[0].__dask_graph__())``, under the same dask
    configuration as the compute (low-level fusion included where it applies).
bytes read MiB
    the increase of ``rchar`` (``/proc/<pid>/io``, i.e. psutil's ``read_chars``) summed over
    the child and its descendants, from just before the open to just after the compute.
    ``rchar`` counts every ``read``-family system call whether or not it reached the disk
    (page-cache hits too) and on any descriptor: on a cluster it therefore also counts
    the loopback traffic between client, scheduler and workers and P2P's spill files.
    The disk-level counter (``read_bytes``) is in the JSON output; with a warm page cache
    it is about zero unless ``--cold`` is given.
CPU s (tree), others' CPU %
    CPU time of the child's process tree (its reaped descendants included), and the CPU
    time the rest of the machine used meanwhile, as a share of all cores over
    ``process s``: anything well above 0 means that the timings of that row are disturbed.
checksum
    ``float(np.nansum(result, dtype=np.float64))``; all checksums of a layout (and the
    numbers of all-NaN pixels) must agree to a relative 1e-6. The JSON also has a digest of
    the result's bytes, which tells whether results are bitwise identical.

Notes
-----
``ds.refl.median("time")`` on a dask array runs ``dask.array.nanmedian``, which applies
``numbagg.nanmedian`` to each block when numbagg is installed and ``np.nanmedian``
otherwise: every method uses the same kernel. numba compiles numbagg's kernel on first
use in each process, 12-20 s on a 2-core machine. So that this is neither timed nor paid
in every child and worker, the parent first compiles it once into numba's disk cache
(``NUMBAGG_CACHE=1``, ``NUMBA_CACHE_DIR=<workdir>/numba-cache``; ``--no-jit-cache`` turns
that off), and each child (and each worker of a cluster) runs the kernel once on a tiny
array before the timed part (``kernel warm-up`` in the notes under each table; part of
``process s``; ``--no-warm-up`` skips it, so that loading or compiling is timed too).

The ``whole`` layout differs from ``tiles`` only when ``--size`` is above 256.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil

LAYOUTS = ("tiles", "whole", "contiguous")
METHODS = ("xrdist", "netcdf4", "h5netcdf", "netcdf4-p2p", "xrdist-cluster")
DEFAULT_METHODS = ("xrdist", "netcdf4", "h5netcdf", "netcdf4-p2p", "xrdist-cluster")
CLUSTER_METHODS = ("netcdf4-p2p", "xrdist-cluster")
BASELINES = ("netcdf4", "h5netcdf")
TILE = 256
CHUNKS = {"time": -1, "y": TILE, "x": TILE}
SCALE = np.float32(1e-4)
CLOUD_FRACTION = 0.2
#: Bump when the generated data change, so cached stacks are rewritten.
GENERATOR_VERSION = 1
SAMPLE_SECONDS = 0.05
MIB = 1024**2
PACKAGES = (
    "xrdist",
    "xarray",
    "dask",
    "distributed",
    "numpy",
    "netCDF4",
    "h5netcdf",
    "h5py",
    "psutil",
    "numbagg",
    "numba",
)


# -- the synthetic stack ----------------------------------------------------------------


def stack_dir(workdir: Path, layout: str, dates: int, size: int) -> Path:
    return workdir / f"{layout}-{dates}x{size}"


def stack_paths(directory: Path) -> list[str]:
    return sorted(glob.glob(str(directory / "refl_*.nc")))


def _surface(size: int) -> np.ndarray:
    """A smooth reflectance field, 0.05 .. 0.35."""
    u = np.linspace(0.0, 1.0, size, dtype=np.float32)
    field = 0.18 + 0.08 * np.outer(np.cos(3.0 * u), np.sin(5.0 * u + 0.3))
    field += 0.06 * u[np.newaxis, :] - 0.03 * u[:, np.newaxis] ** 2
    return field.astype(np.float32)


def _clouds(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random field thresholded so that ~CLOUD_FRACTION of the pixels are True."""
    u = np.linspace(0.0, 2.0 * np.pi, size, dtype=np.float32)
    field = np.zeros((size, size), dtype=np.float32)
    for _ in range(4):
        fy, fx = rng.uniform(1.0, 6.0, size=2)
        py, px = rng.uniform(0.0, 2.0 * np.pi, size=2)
        field += np.outer(np.sin(fy * u + py), np.cos(fx * u + px)).astype(np.float32)
    field += rng.normal(0.0, 0.3, size=(size, size)).astype(np.float32)
    cut = np.partition(field.ravel(), int(field.size * (1 - CLOUD_FRACTION)))[
        int(field.size * (1 - CLOUD_FRACTION))
    ]
    return field > cut


def _write_file(
    path: Path, layout: str, date: int, raw: np.ndarray, y: np.ndarray, x: np.ndarray
) -> None:
    import netCDF4

    size = raw.shape[-1]
    kwargs: dict[str, Any]
    if layout == "tiles":
        kwargs = {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (1, TILE, TILE)}
    elif layout == "whole":
        kwargs = {"zlib": True, "complevel": 1, "shuffle": True, "chunksizes": (1, size, size)}
    elif layout == "contiguous":
        kwargs = {"contiguous": True}
    else:
        raise ValueError(f"unknown layout {layout!r}")
    tmp = path.with_suffix(".tmp")
    with netCDF4.Dataset(tmp, "w", format="NETCDF4") as nc:
        nc.title = "synthetic surface reflectance for the xrdist median benchmark"
        nc.createDimension("time", 1)
        nc.createDimension("y", size)
        nc.createDimension("x", size)
        t = nc.createVariable("time", "i4", ("time",))
        t.units = "days since 2000-01-01"
        t.calendar = "standard"
        t.standard_name = "time"
        t[:] = [date]
        for name, values, axis in (("y", y, "Y"), ("x", x, "X")):
            v = nc.createVariable(name, "f8", (name,))
            v.units = "m"
            v.axis = axis
            v[:] = values
        var = nc.createVariable("refl", "u2", ("time", "y", "x"), fill_value=0, **kwargs)
        var.set_auto_maskandscale(False)
        var.scale_factor = SCALE
        var.add_offset = np.float32(0.0)
        var.long_name = "surface reflectance"
        var.units = "1"
        var[0, :, :] = raw
    os.replace(tmp, path)


def ensure_stack(workdir: Path, layout: str, dates: int, size: int) -> tuple[Path, float]:
    """The stack's folder (written unless already there) and the seconds spent writing."""
    directory = stack_dir(workdir, layout, dates, size)
    marker = directory / "stack.json"
    params = {"layout": layout, "dates": dates, "size": size, "version": GENERATOR_VERSION}
    cached = marker.exists() and json.loads(marker.read_text()) == params
    if cached and len(stack_paths(directory)) == dates:
        return directory, 0.0
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("refl_*"):
        old.unlink()
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    surface = _surface(size)
    y = 5_000_000.0 - 10.0 * (np.arange(size) + 0.5)
    x = 300_000.0 + 10.0 * (np.arange(size) + 0.5)
    jj, ii = np.meshgrid(np.arange(size), np.arange(size))
    outside = ii + jj < size // 8  # a corner outside the swath: fill on every date
    for i in range(dates):
        rng = np.random.default_rng([GENERATOR_VERSION, size, i])
        day = 5 * i
        season = np.float32(0.03 * math.sin(2 * math.pi * day / 365.25))
        values = surface + season + rng.normal(0.0, 0.01, (size, size)).astype(np.float32)
        raw = np.clip(np.rint(values / SCALE), 1, 65535).astype(np.uint16)
        raw[_clouds(rng, size) | outside] = 0
        _write_file(directory / f"refl_{i:04d}.nc", layout, day, raw, y, x)
    marker.write_text(json.dumps(params))
    return directory, time.perf_counter() - start


def evict_from_page_cache(paths: list[str]) -> None:
    """Ask the kernel to drop the files' cached pages (for --cold runs)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# -- one run, in a fresh subprocess -----------------------------------------------------


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(proc: psutil.Process) -> int:
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


def _warm_kernel() -> str:
    """Run the median kernel once on a tiny array (compiles it if it is JIT-compiled)."""
    import dask.array as da

    tiny = da.zeros((4, 8, 8), chunks=(4, 4, 4), dtype=np.float32)
    da.nanmedian(tiny, axis=0).compute(scheduler="threads")
    return "ok"


def warm_up(client: Any) -> float:
    """Seconds spent compiling the median kernel in this process and on each worker.

    With numbagg installed, ``dask.array.nanmedian`` runs ``numbagg.nanmedian``, which numba
    compiles on first use in every process (about 20 s here, not cached on disk): on the
    main thread when the graph is built and in the threads that run the tasks.
    """
    start = time.perf_counter()
    _warm_kernel()
    if client is not None:
        workers = list(client.scheduler_info()["workers"])
        futures = [
            client.submit(_warm_kernel, workers=[w], allow_other_workers=False, pure=False)
            for w in workers
        ]
        client.gather(futures)
    return time.perf_counter() - start


def _open(method: str, paths: list[str]) -> Any:
    import xarray as xr

    import xrdist

    if method.startswith("xrdist"):
        return xrdist.open_mfdataset(paths, chunks=CHUNKS)
    engine = "h5netcdf" if method == "h5netcdf" else "netcdf4"
    return xr.open_mfdataset(paths, engine=engine, chunks={}).chunk(CHUNKS)


def run_one(method: str, layout: str, directory: Path, warm: bool = True) -> dict[str, Any]:
    """Open, median, compute; everything a parent needs to compare, as a dict."""
    import dask
    import xarray as xr

    import xrdist  # imported before the baseline of the I/O counters

    xr.backends.list_engines()  # load every backend's modules before measuring
    paths = stack_paths(directory)
    me = psutil.Process()
    out: dict[str, Any] = {
        "method": method,
        "layout": layout,
        "files": len(paths),
        "xrdist_source": os.path.dirname(os.path.abspath(xrdist.__file__)),
    }
    config: dict[str, Any] = {"scheduler": "threads"}
    cluster = client = None
    with contextlib.ExitStack() as stack:
        if method in CLUSTER_METHODS:
            from distributed import Client, LocalCluster

            # P2P cannot run through low-level task fusion on some dask versions; switch
            # it off for both cluster methods so that they run under one configuration.
            config = {"array.rechunk.method": "p2p", "optimization.fuse.active": False}
            start = time.perf_counter()
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=2,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=40,
                )
            )
            client = stack.enter_context(Client(cluster))
            client.wait_for_workers(2)
            out["cluster_s"] = time.perf_counter() - start
        stack.enter_context(dask.config.set(config))
        if warm:
            out["warm_up_s"] = warm_up(client)
        caught = stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        out["base_rss_tree"] = tree_rss(me)
        io_before = tree_io(me)
        start = time.perf_counter()
        ds = _open(method, paths)
        opened = time.perf_counter()
        median = ds.refl.median("time")
        out["decoded_dtype"] = str(ds.refl.dtype)
        result = client.compute(median).result() if client is not None else median.compute()
        done = time.perf_counter()
        rchar, read_bytes = io_delta(io_before, tree_io(me))
        out["tasks"] = len(dask.optimize(median.data)[0].__dask_graph__())
        plan = ds.encoding.get("xrdist_plan")
        if plan is not None:
            v = plan.variables["refl"]
            out["plan"] = {
                "strategy": v.strategy,
                "rechunk_method": v.rechunk_method,
                "read_chunks": [max(c) for c in v.read_chunks],
                "amplification": v.amplification,
                "requested_amplification": v.requested_amplification,
                "read_tasks": v.tasks,
            }
        out["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
        if cluster is not None:
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


def child_main(args: argparse.Namespace) -> int:
    directory = stack_dir(Path(args.workdir), args.layout, args.dates, args.size)
    result = run_one(args.run, args.layout, directory, warm=not args.no_warm_up)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# -- the parent: spawn, sample, tabulate ------------------------------------------------


def _kill_tree(proc: psutil.Process) -> None:
    for p in reversed(_tree(proc)):
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def snapshot_xrdist(ref: str, workdir: Path) -> Path:
    """Extract the ``xrdist`` package of git ``ref`` (of this repository) into
    ``workdir/xrdist-<commit>``; the children import it from there (``PYTHONPATH``), so
    edits of the work tree during a run cannot change what is measured."""
    import io
    import tarfile

    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
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


def child_env(args: argparse.Namespace) -> dict[str, str]:
    """The children's environment: numba's on-disk cache for numbagg unless --no-jit-cache,
    and the xrdist snapshot of --xrdist-ref first on the path."""
    env = dict(os.environ)
    if args.xrdist_path:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(args.xrdist_path), env.get("PYTHONPATH", "")) if p
        )
    if not args.no_jit_cache:
        env["NUMBAGG_CACHE"] = "1"
        env["NUMBA_CACHE_DIR"] = str(Path(args.workdir) / "numba-cache")
    return env


def fill_jit_cache(args: argparse.Namespace) -> float:
    """Compile the median kernel once, in a process of its own, so that the children (and
    the workers of a cluster, which start at the same time) only load it from the cache."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--fill-jit-cache"],
        env=child_env(args),
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def spawn(args: argparse.Namespace, method: str, layout: str) -> dict[str, Any]:
    """Run one method in a fresh subprocess, sampling its process tree's RSS."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--run",
        method,
        "--layout",
        layout,
        "--dates",
        str(args.dates),
        "--size",
        str(args.size),
        "--workdir",
        str(args.workdir),
        *(["--no-warm-up"] if args.no_warm_up else []),
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        cpu_before, busy_before = _children_cpu(), _busy_cpu()
        start = time.perf_counter()
        popen = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=os.getcwd(), env=child_env(args))
        proc = psutil.Process(popen.pid)
        peak, samples, timed_out = 0, 0, False
        while popen.poll() is None:
            peak = max(peak, tree_rss(proc))
            samples += 1
            if time.perf_counter() - start > args.timeout:
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
    record: dict[str, Any] = {"method": method, "layout": layout}
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if popen.returncode == 0 and lines:
        record.update(json.loads(lines[-1]))
        record["ok"] = True
    else:
        record["ok"] = False
        record["error"] = (
            f"timed out after {args.timeout:g} s" if timed_out else f"exit code {popen.returncode}"
        )
        record["stderr"] = stderr[-6000:]
        record["stdout"] = stdout[-2000:]
    record.update(
        process_s=elapsed,
        peak_rss_tree=peak,
        rss_samples=samples,
        tree_cpu_s=tree_cpu,
        other_cpu_s=max(0.0, busy - tree_cpu),
        other_cpu_share=max(0.0, busy - tree_cpu) / (elapsed * (os.cpu_count() or 1)),
    )
    return record


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children and their reaped descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy_cpu() -> float:
    """CPU seconds the whole machine has spent busy (not idle or waiting for I/O)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


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
    checksums = {(r["checksum"], r["nan_count"], r["digest"]) for r in ok}
    out["repeat_consistent"] = len(checksums) == 1
    out["ok"] = len(ok) == len(runs)
    out["runs"] = runs
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def layout_description(layout: str, directory: Path, dates: int, size: int) -> str:
    paths = stack_paths(directory)
    on_disk = sum(os.path.getsize(p) for p in paths)
    raw = dates * size * size * 2
    storage = {
        "tiles": f"zlib(1)+shuffle, chunks (1, {TILE}, {TILE})",
        "whole": f"zlib(1)+shuffle, chunks (1, {size}, {size})",
        "contiguous": "uncompressed, contiguous",
    }[layout]
    return (
        f"layout `{layout}`: {dates} files of refl(1, {size}, {size}) uint16, {storage}; "
        f"{on_disk / MIB:.1f} MiB on disk ({raw / MIB:.1f} MiB raw)"
    )


def table(results: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The markdown table of one layout and the problems found (mismatches, failures)."""
    problems = []
    base = [r["wall_s"] for r in results if r["method"] in BASELINES and r["ok"]]
    reference = min(base) if base else None
    head = (
        "| method | wall s | open s | process s | base RSS MiB (tree) | peak RSS MiB (tree) "
        "| tasks | bytes read MiB | checksum | all-NaN px | wall / best xarray | CPU s (tree) "
        "| others' CPU % |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        if not r["ok"] and "wall_s" not in r:
            lines.append(
                f"| {r['method']} | FAILED ({r['error']}) | | {_fmt(r['process_s'])} | | "
                f"{r['peak_rss_tree'] / MIB:.0f} | | | | | | {_fmt(r['tree_cpu_s'])} "
                f"| {100 * r['other_cpu_share']:.0f} |"
            )
            problems.append(f"{r['method']} FAILED: {r['error']}")
            continue
        ratio = f"{r['wall_s'] / reference:.2f}" if reference else "n/a"
        lines.append(
            f"| {r['method']} | {_fmt(r['wall_s'])} | {_fmt(r['open_s'])} | "
            f"{_fmt(r['process_s'])} | {r['base_rss_tree'] / MIB:.0f} | "
            f"{r['peak_rss_tree'] / MIB:.0f} | {r['tasks']} | {r['rchar'] / MIB:.1f} | "
            f"{r['checksum']:.9g} | {r['nan_count']} | {ratio} | {_fmt(r['tree_cpu_s'])} | "
            f"{100 * r['other_cpu_share']:.0f} |"
        )
        if not r["ok"]:
            problems.append(f"{r['method']}: some repeats FAILED")
        if not r.get("repeat_consistent", True):
            problems.append(f"{r['method']}: repeats gave different results")
    good = [r for r in results if "checksum" in r]
    if good:
        first = good[0]
        for r in good[1:]:
            close = math.isclose(r["checksum"], first["checksum"], rel_tol=1e-6)
            if not close or r["nan_count"] != first["nan_count"]:
                problems.append(
                    f"MISMATCH: {r['method']} checksum {r['checksum']!r} / {r['nan_count']} NaN"
                    f" vs {first['method']} {first['checksum']!r} / {first['nan_count']} NaN"
                )
    return "\n".join(lines), problems


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
                f"{plan['read_tasks']} read tasks, amplification {plan['amplification']:.2f} "
                f"(requested chunks: {plan['requested_amplification']:.2f})"
            )
        extra = []
        if "cluster_s" in r:
            extra.append(f"cluster start {r['cluster_s']:.2f} s")
        if "warm_up_s" in r:
            extra.append(f"kernel warm-up {r['warm_up_s']:.2f} s")
        if extra:
            out.append(f"{r['method']}: {', '.join(extra)} (in process s, not in wall s)")
        for w in r.get("warnings", []):
            out.append(f"{r['method']} warned: {w[:300]}")
    return out


def xrdist_state() -> str:
    """Where ``import xrdist`` finds the package (without importing it), and its git commit
    (and whether it has uncommitted changes) if it is in a git work tree."""
    import importlib.util

    spec = importlib.util.find_spec("xrdist")
    if spec is None or spec.origin is None:
        return "xrdist not found"
    directory = os.path.dirname(spec.origin)
    return f"{directory}{_git_state(directory)}"


def _git_state(directory: str) -> str:
    """`` (git <commit>[, modified])`` for a package inside a git work tree, else ``""``."""
    try:
        commit = subprocess.run(
            ["git", "-C", directory, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", directory, "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f" (git {commit}{', with uncommitted changes' if dirty else ''})"


def machine() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import netCDF4

        versions["netcdf-c"] = netCDF4.__netcdf4libversion__
        versions["hdf5 (netCDF4)"] = netCDF4.__hdf5libversion__
    except ImportError:  # pragma: no cover
        pass
    try:
        import h5py

        versions["hdf5 (h5py)"] = h5py.version.hdf5_version
    except ImportError:  # pragma: no cover
        pass
    return {
        "cpu_count": os.cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def parent_main(args: argparse.Namespace) -> int:
    layouts = _split(args.layouts, LAYOUTS, "layout")
    methods = _split(args.methods, METHODS, "method")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    print(
        f"# median over time: {args.dates} dates x {args.size}^2, chunks {CHUNKS}, "
        f"repeat {args.repeat}, {'cold' if args.cold else 'warm'} page cache"
    )
    print(
        f"machine: {info['cpu_count']} CPUs, {info['ram_bytes'] / 1024**3:.1f} GiB RAM, "
        f"Python {info['python']}; "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    )
    if args.xrdist_ref:
        args.xrdist_path = snapshot_xrdist(args.xrdist_ref, workdir)
        info["xrdist"] = f"{args.xrdist_path / 'xrdist'} (git {args.xrdist_path.name[7:]})"
    else:
        info["xrdist"] = xrdist_state()
    print(f"xrdist: {info['xrdist']}")
    if not args.no_jit_cache:
        seconds = fill_jit_cache(args)
        print(f"median kernel compiled into (or found in) numba's disk cache in {seconds:.1f} s")
    report: dict[str, Any] = {
        "args": vars(args),
        "machine": info,
        "chunks": CHUNKS,
        "layouts": {},
    }
    problems_all = []
    for layout in layouts:
        directory, seconds = ensure_stack(workdir, layout, args.dates, args.size)
        print()
        print(f"## {layout_description(layout, directory, args.dates, args.size)}")
        print(
            f"(generated in {seconds:.1f} s)" if seconds else f"(cached in {directory})",
            flush=True,
        )
        results = []
        for method in methods:
            runs = []
            for _ in range(args.repeat):
                if args.cold:
                    evict_from_page_cache(stack_paths(directory))
                runs.append(spawn(args, method, layout))
            summary = summarise(runs)
            results.append(summary)
            status = f"{summary['wall_s']:.2f} s" if "wall_s" in summary else "FAILED"
            print(f"  {method}: {status}", file=sys.stderr, flush=True)
        text, problems = table(results)
        print()
        print(text)
        print()
        for line in notes(results):
            print(f"- {line}")
        for problem in problems:
            print(f"!!! {layout}: {problem}")
        for r in results:
            for run in r["runs"]:
                if not run["ok"]:
                    print(f"\n--- {layout} / {run['method']} stderr (tail) ---\n{run['stderr']}")
        problems_all += [f"{layout}: {p}" for p in problems]
        report["layouts"][layout] = {
            "description": layout_description(layout, directory, args.dates, args.size),
            "results": results,
            "problems": problems,
        }
    checksums = {
        layout: {r["checksum"] for r in v["results"] if "checksum" in r}
        for layout, v in report["layouts"].items()
    }
    values = [c for cs in checksums.values() for c in cs]
    if values and any(not math.isclose(c, values[0], rel_tol=1e-6) for c in values):
        print("\nnote: the layouts' checksums differ from one another (same data expected)")
    if not args.xrdist_ref and xrdist_state() != info["xrdist"]:
        problems_all.append(
            f"xrdist changed during the run: {info['xrdist']} at the start, "
            f"{xrdist_state()} at the end"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
        print(f"\nresults written to {args.json}")
    if problems_all:
        print("\n" + "!" * 72)
        for problem in problems_all:
            print(f"!!! {problem}")
        print("!" * 72)
        return 1
    return 0


def _split(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}(s) {unknown}; choose from {list(allowed)}")
    return items


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dates", type=int, default=120, help="files (one date each)")
    parser.add_argument("--size", type=int, default=1024, help="pixels along y and x")
    parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated")
    parser.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "xrdist-bench-median"),
        help="where the stacks are written and cached",
    )
    parser.add_argument("--json", help="write all results and the machine's description here")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (median)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    parser.add_argument(
        "--cold", action="store_true", help="drop the stack from the page cache before each run"
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="do not run the median kernel once before timing (JIT compilation then counts)",
    )
    parser.add_argument(
        "--no-jit-cache",
        action="store_true",
        help="do not let numba cache numbagg's compiled kernel on disk (under --workdir)",
    )
    parser.add_argument(
        "--xrdist-ref",
        help="benchmark xrdist as of this git commit or branch of the repository (extracted "
        "under --workdir) instead of the package that `import xrdist` finds",
    )
    parser.add_argument("--fill-jit-cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.xrdist_path = None
    if args.repeat < 1 or args.dates < 2 or args.size < 1:
        parser.error("--repeat must be >= 1, --dates >= 2 and --size >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fill_jit_cache:
        _warm_kernel()
        return 0
    if args.run:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
