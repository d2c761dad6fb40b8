"""The ``xrdist`` command line."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
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
        help="read many real netCDF files from threads through the handle cache",
        description="Write small netCDF4 files, read them from threads through xrdist's "
        "handle cache (h5py and netCDF4 handles), check every value, print the statistics.",
    )
    demo.add_argument("--files", type=int, default=300, help="number of files (default 300)")
    demo.add_argument("--threads", type=int, default=8, help="reader threads (default 8)")
    demo.add_argument("--passes", type=int, default=3, help="reads of each file (default 3)")
    demo.add_argument("--cache-size", type=int, default=32, help="handle cache size (default 32)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
