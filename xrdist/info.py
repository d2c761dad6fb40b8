"""``xrdist info FILE_OR_GLOB ...``: what a file or stack holds, and how xrdist would read it.

Prints each variable's dimensions, dtype, on-disk chunks, compression and read path
(byte ranges or the library), then the planner's choice for the requested chunks (default
``"auto"``) with the expected amplification and memory per task.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xrdist.describing import DEFAULT_LIBRARY, LIBRARIES
from xrdist.description import FileDescription


def _compression(encoding: dict[str, Any]) -> str:
    names = [str(encoding["compression"])] if encoding.get("compression") else []  # TIFF
    names += [k for k in ("zlib", "zstd", "bzip2", "szip") if encoding.get(k)]
    if encoding.get("blosc"):
        blosc = encoding["blosc"]
        names.append(blosc["compressor"] if isinstance(blosc, dict) else "blosc")
    if encoding.get("shuffle"):
        names.append("shuffle")
    if encoding.get("fletcher32"):
        names.append("fletcher32")
    level = encoding.get("complevel")
    text = "+".join(names) or "none"
    return f"{text} (level {level})" if level else text


def describe_variables(description: FileDescription) -> list[str]:
    rows = [
        "| variable | dims | shape | dtype | on-disk chunks | compression | read path |",
        "|---|---|---|---|---|---|---|",
    ]
    paths = read_paths(description)
    for name, var in description.variables.items():
        chunks = var.encoding.get("chunksizes") or "contiguous"
        rows.append(
            f"| {name} | {', '.join(var.dims) or '-'} | {var.shape} | {var.dtype} | "
            f"{chunks} | {_compression(var.encoding)} | {paths[name]} |"
        )
    return rows


def read_paths(description: FileDescription) -> dict[str, str]:
    """How xrdist reads each variable of the described file: ``byte ranges`` (read
    with ``pread`` and decoded outside any library's lock), ``h5py: <why not>`` (through
    h5py, under HDF5's lock), or ``netCDF-C`` (under its lock, one call at a time)."""
    names = list(description.variables)
    if description.library == "tifffile":
        return dict.fromkeys(names, "byte ranges")
    if description.library != "h5py":
        return dict.fromkeys(names, "netCDF-C")
    from xrdist.formats import h5pylib

    with h5pylib.proxy(description.path).lease() as handle:
        found = {name: h5pylib.read_path(handle, description.group, name) for name in names}
    return {name: "byte ranges" if how == "byte-range" else how for name, how in found.items()}


def compiled_reads_line() -> str:
    """Whether stack windows' deflated HDF5 chunks are read by the compiled loop."""
    from xrdist.groupread import compiled_reads_unavailable
    from xrdist.options import get_option

    why_not = compiled_reads_unavailable()
    if why_not is not None:
        return f"compiled chunk reads: unavailable ({why_not})"
    option = get_option("compiled_reads")
    return f"compiled chunk reads: available (option compiled_reads={option!r})"


def parse_chunks(text: str) -> Any:
    """``auto``, or ``time=-1,y=512,x=512``."""
    if text == "auto":
        return "auto"
    chunks = {}
    for part in text.split(","):
        dim, _, value = part.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"chunks must look like time=-1,y=512: {text!r}")
        chunks[dim.strip()] = int(value)
    return chunks


def run(args: argparse.Namespace) -> int:
    """Print the tables; a bad path, stack or option is one line on stderr, exit 2."""
    try:
        return _print_info(args)
    except (OSError, ValueError) as err:  # StackError and PlanError are ValueErrors
        print(f"xrdist info: error: {err}", file=sys.stderr)
        return 2


def _print_info(args: argparse.Namespace) -> int:
    from xrdist.mfdataset import plan
    from xrdist.scan import expand_paths, scan

    given = args.paths
    paths = expand_paths(given[0] if len(given) == 1 else given)
    if len(paths) == 1 and args.concat_dim is None:
        from xrdist.describing import describe_file
        from xrdist.locks import canonical_path

        description = describe_file(canonical_path(paths[0]), args.library, None)
        print(f"{paths[0]}: {description.file_format}, read with {description.library}")
        print("\n".join(describe_variables(description)))
        return 0
    stack = scan(
        paths,
        library=args.library,
        concat_dim=args.concat_dim,
        combine="nested" if args.concat_dim else "by_coords",
    )
    first = stack.first
    print(
        f"{len(paths)} files stacked along {stack.concat_dim!r} "
        f"({stack.starts[-1]} steps), {first.file_format}, read with {stack.library}; "
        f"first file {first.path}"
    )
    print("\n".join(describe_variables(first)))
    if first.library == "h5py":
        print(compiled_reads_line())
    print(f"\nplan for chunks {args.chunks}:")
    print(
        plan(
            paths,
            chunks=args.chunks,
            max_mem=args.max_mem,
            library=args.library,
            concat_dim=args.concat_dim,
            combine="nested" if args.concat_dim else "by_coords",
        )
    )
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", help="a file, files, or a glob pattern of files (quoted)"
    )
    parser.add_argument(
        "--chunks",
        type=parse_chunks,
        default="auto",
        help="target chunks, e.g. time=-1,y=512,x=512 (default: auto)",
    )
    parser.add_argument(
        "--concat-dim", default=None, help="stack along this dimension in the order given (nested)"
    )
    parser.add_argument(
        "--max-mem", default=None, help="memory per task: bytes, or e.g. 2GiB (default: auto)"
    )
    parser.add_argument(
        "--library",
        default=DEFAULT_LIBRARY,
        choices=LIBRARIES,
        help="auto (default), h5py, netcdf4 or tifffile",
    )
