"""The ``xrdist`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from xrdist import demo

    return demo.run(args)


def _bench(args: argparse.Namespace) -> int:
    from xrdist import bench

    return bench.run(args)


def _info(args: argparse.Namespace) -> int:
    from xrdist import info

    return info.run(args)


def _cache_demo(args: argparse.Namespace) -> int:
    from xrdist import handle_demo

    handle_demo.run(
        files=args.files, threads=args.threads, passes=args.passes, cache_size=args.cache_size
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xrdist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="cloud-free median of a synthetic satellite stack: xrdist vs xarray + dask",
        description="Write a synthetic satellite stack (one netCDF file or COG per date, "
        "clouds as nodata), compute the cloud-free median composite with xrdist and with "
        "plain xarray (or rioxarray) + dask, print a side-by-side table and write a PNG.",
    )
    from xrdist.demo import add_arguments

    add_arguments(demo)
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench",
        help="median of stacks of several layouts: xrdist vs xarray's readers, timed",
        description="Write synthetic stacks (netCDF tiles, whole, contiguous; COGs), compute "
        "the median over time with xrdist and with xarray's readers, each in a fresh "
        "process, and report wall time, peak memory of the process tree, tasks and bytes "
        "read; fail if the results disagree. Writes JSON, markdown and a plot on request.",
    )
    from xrdist.bench import add_arguments as add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(run=_bench)
    info = commands.add_parser(
        "info",
        help="variables, on-disk chunks and the read plan of a file or stack",
        description="Show the variables, dims, dtypes, on-disk chunks and compression of a "
        "file or a stack of files, and the chunks xrdist's planner would choose, with the "
        "expected amplification and memory per task.",
    )
    from xrdist.info import add_arguments as add_info_arguments

    add_info_arguments(info)
    info.set_defaults(run=_info)
    cache = commands.add_parser(
        "cache-demo",
        help="read many real netCDF files from threads through the handle cache",
        description="Write small netCDF4 files, read them from threads through xrdist's "
        "handle cache (h5py and netCDF4 handles), check every value, print the statistics.",
    )
    cache.add_argument("--files", type=int, default=300, help="number of files (default 300)")
    cache.add_argument("--threads", type=int, default=8, help="reader threads (default 8)")
    cache.add_argument("--passes", type=int, default=3, help="reads of each file (default 3)")
    cache.add_argument("--cache-size", type=int, default=32, help="handle cache size (default 32)")
    cache.set_defaults(run=_cache_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
