"""The child process of the fuzz tests: open and load a batch of (mutated) files.

``python tests/fuzz_child.py JOBS.json`` reads a list of ``{"path": ..., "options": {...}}``
and opens each with ``xr.open_dataset(path, engine="xrdist", **options)``, then loads it.
For every job it writes two JSON lines to stdout, each flushed at once: ``{"start": i}``
before, ``{"done": i, "outcome": ...}`` after, so that if a native library kills the
process (a segmentation fault, an abort) the parent knows which input was being read.
``faulthandler`` writes the Python stack of a crash to stderr.

The outcome is ``{"status": "ok"}`` or ``{"status": "error", "type": ..., "mro": [...],
"message": ..., "names_path": bool, "where": "file:line"}``: the exception's class, the
names of its classes (the parent decides which are acceptable), its message with any
notes, and the innermost frame it came from.

``python tests/fuzz_child.py --plain LIBRARY PATH`` reads the file with the library
alone (``netCDF4``, ``h5py`` or ``tifffile``: open, read every variable, close), for the
parent to tell whether a crash is the library's own; it exits 0 whether or not the
library raised, and dies by the signal if the library crashes.

After each input the handle cache is cleared and the garbage collected, so that a
finalizer that crashes does so at the input that made it. Address space is capped
(``RLIMIT_AS``) so that a header claiming terabytes raises ``MemoryError`` here instead
of exhausting the machine.
"""

from __future__ import annotations

import faulthandler
import gc
import json
import resource
import sys
import traceback
import warnings
from typing import Any

#: Address-space cap of the child: far above what reading the seed files needs.
ADDRESS_SPACE = 6 * 2**30


def outcome_of(error: BaseException, path: str) -> dict[str, Any]:
    """What the parent needs to judge an exception."""
    notes = [str(n) for n in getattr(error, "__notes__", None) or []]
    message = "\n".join([str(error), *notes])
    frames = traceback.extract_tb(error.__traceback__)
    return {
        "status": "error",
        "type": f"{type(error).__module__}.{type(error).__qualname__}",
        "mro": [c.__name__ for c in type(error).__mro__],
        "message": message[:2000],
        "names_path": path in message,
        "where": f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?",
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Open and load one file with xrdist; its outcome (an ``Exception`` is caught)."""
    import xarray as xr

    import xrdist

    path = job["path"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = xr.open_dataset(path, engine="xrdist", **job.get("options", {}))
            try:
                ds.load()
            finally:
                ds.close()
        result: dict[str, Any] = {"status": "ok"}
    except Exception as error:  # judged by the parent
        result = outcome_of(error, path)
    finally:
        xrdist.clear_cache()
        gc.collect()  # a finalizer that crashes does it here, at this input
    return result


def read_plain(library: str, path: str) -> None:
    """Open ``path`` with ``library`` alone and read everything in it; exceptions are
    ignored (only a crash matters here)."""
    try:
        if library == "netCDF4":
            import netCDF4

            with netCDF4.Dataset(path) as ds:
                groups = [ds]
                while groups:
                    group = groups.pop()
                    groups.extend(group.groups.values())
                    for var in group.variables.values():
                        try:
                            var[...]
                        except Exception:
                            pass
        elif library == "h5py":
            import h5py

            def read(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    try:
                        obj[()]
                    except Exception:
                        pass

            with h5py.File(path, "r") as f:
                f.visititems(read)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                for level in tif.series[0].levels:
                    level.asarray()
    except Exception:
        pass
    gc.collect()


def main(argv: list[str]) -> int:
    faulthandler.enable()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(ADDRESS_SPACE, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    if argv[1] == "--plain":
        read_plain(argv[2], argv[3])
        return 0
    with open(argv[1]) as f:
        jobs = json.load(f)
    import xarray  # noqa: F401  (imported before the freeze below)

    import xrdist

    xrdist.set_options(description_cache_dir=None)  # in memory only: every input is new
    gc.freeze()  # objects alive now are never collected: each gc.collect() stays cheap
    out = sys.stdout
    for i, job in enumerate(jobs):
        out.write(json.dumps({"start": i}) + "\n")
        out.flush()
        result = run_job(job)
        out.write(json.dumps({"done": i, "outcome": result}) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
