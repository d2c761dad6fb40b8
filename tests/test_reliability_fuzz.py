"""Reliability: damaged files give clean errors that name them, never a crash.

Real seed files (netCDF-3 classic, netCDF-4/HDF5 with zlib chunks, plain HDF5, a tiled
COG from :func:`xrdist.synthetic.write_stack`) are mutated with byte flips, bytes set to
boundary values, truncations, zeroed ranges and inserted junk, mostly in their first
kilobytes where the headers are. Each mutated file is opened with
``xr.open_dataset(path, engine="xrdist")`` and loaded in a child process
(``tests/fuzz_child.py``) that handles a batch of files: native code that crashes takes
down only the child. The test accepts a load, or an exception that is an ``OSError``,
``ValueError``, ``LookupError``, ``EOFError`` or ``MemoryError`` and whose message (or
notes) names the file. Anything else fails the test, with the input kept in
``$TMPDIR/xrdist-fuzz-failures``:

* an exception of another type (``TypeError``, ``AttributeError``...: a bug), or one
  whose message does not name the file;
* a child that dies by a signal or hangs (no progress for ``INPUT_TIMEOUT`` seconds) on
  an input that the native libraries (netCDF4, h5py or tifffile, each alone in another
  process) read without crashing or hanging.

A crash or hang that a native library reproduces on its own, outside xrdist, is not
xrdist's to fix: it is counted and reported (figures, a warning, the input kept under
``native/``), not hidden, and docs/reliability.md lists the cases. When a child dies,
the input it was reading is run again alone to confirm it, and the rest of its batch
goes on in a new child.

The same ``--fuzz-seed`` gives the same inputs; ``--fuzz-examples`` sets how many per
seed format.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from xrdist.backend import XrdistBackendEntrypoint
from xrdist.describing import (
    HDF5_MAGIC,
    NETCDF3_MAGICS,
    TIFF_MAGICS,
    check_readable,
    sniff_format,
)
from xrdist.synthetic import write_stack

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(3600)]

CHILD = Path(__file__).with_name("fuzz_child.py")
#: Exceptions a damaged file may raise (by class name, anywhere in the exception's MRO).
ACCEPTED = ("OSError", "ValueError", "LookupError", "EOFError", "MemoryError")
BATCH = 64
#: Seconds a child may spend on one input before it is taken for hung (most take ms).
INPUT_TIMEOUT = 20.0
HUNG = -1000  # the return code reported for a child killed because it hung
#: Inputs that fail are copied here (by kind and seed), outside pytest's rotating tmp.
KEEP = Path(tempfile.gettempdir()) / "xrdist-fuzz-failures"
KINDS = ("netcdf3", "netcdf4", "hdf5", "cog")
#: Options each input is opened with, chosen at random per input.
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "netcdf3": [{}, {"decode_times": False}],
    "netcdf4": [{}, {}, {"library": "h5py"}, {"library": "netcdf4"}],
    "hdf5": [{}, {}, {"library": "netcdf4"}, {"library": "h5py"}],
    "cog": [{}, {}, {"overview_level": 0}],
}
#: The native libraries that read each kind of file alone (to tell whose crash it is).
PLAIN_READERS = {
    "netcdf3": ("netCDF4",),
    "netcdf4": ("netCDF4", "h5py"),
    "hdf5": ("netCDF4", "h5py"),
    "cog": ("tifffile",),
}


# -- seed files ------------------------------------------------------------------------


def write_seeds(folder: Path) -> dict[str, Path]:
    """One small real file of each kind, with the features the readers handle: packed
    and masked values, times, strings, groups, unlimited dimensions, chunks, filters."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    time = pd.date_range("2020-01-01", periods=2)
    base = xr.Dataset(
        {
            "t2m": (("time", "y", "x"), 270 + 30 * rng.random((2, 40, 50)), {"units": "K"}),
            "big": (("yy", "xx"), rng.integers(0, 1000, (150, 120)).astype("i4")),
            "code": (("n", "c"), np.array([list("abcd"), list("efgh")], dtype="S1")),
        },
        coords={"time": time, "y": np.arange(40.0), "x": np.arange(50.0)},
        attrs={"title": "fuzz seed"},
    )
    base.t2m.encoding = {"dtype": "int16", "scale_factor": 0.01, "_FillValue": -32767}
    seeds = {"netcdf3": folder / "classic.nc", "netcdf4": folder / "nc4.nc"}
    base.to_netcdf(seeds["netcdf3"], format="NETCDF3_CLASSIC", unlimited_dims=["time"])
    nc4 = base.assign(station=("s", np.array(["Oslo", "Tromsø"], dtype=object)))
    nc4.to_netcdf(
        seeds["netcdf4"],
        format="NETCDF4",
        unlimited_dims=["time"],
        encoding={
            "t2m": {"zlib": True, "chunksizes": (1, 20, 25), "fletcher32": True},
            "big": {"zlib": True, "shuffle": True, "chunksizes": (50, 60)},
        },
    )
    xr.Dataset({"member": ("m", [0.5, 1.5])}).to_netcdf(seeds["netcdf4"], group="g", mode="a")
    seeds["hdf5"] = folder / "plain.h5"
    with h5py.File(seeds["hdf5"], "w") as f:
        f["a"] = rng.random((30, 20))
        f["a"].attrs["units"] = "m"
        f.create_dataset(
            "b",
            data=rng.integers(0, 100, (200, 100)).astype("i2"),
            chunks=(50, 50),
            compression="gzip",
            shuffle=True,
            fletcher32=True,
        )
        f.create_group("g")["c"] = np.arange(10)
    (cog,) = write_stack(folder / "cog", dates=1, size=256, tile=128, file_format="cog")
    seeds["cog"] = Path(cog)
    return seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_seeds(tmp_path_factory.mktemp("seeds"))


# -- mutations -------------------------------------------------------------------------


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    """One to three mutations; offsets fall in the first 4 KiB (headers, superblock,
    directories) half the time. Returns the bytes and what was done, for the report."""
    out = bytearray(data)
    done = []
    for _ in range(int(rng.integers(1, 4))):
        n = len(out)
        if n == 0:
            break
        at = int(rng.integers(0, min(n, 4096))) if rng.random() < 0.5 else int(rng.integers(n))
        kind = int(rng.integers(5))
        if kind == 0:  # flip bits near the offset
            for _ in range(int(rng.integers(1, 9))):
                k = min(n - 1, at + int(rng.integers(64)))
                bit = int(rng.integers(8))
                out[k] ^= 1 << bit
                done.append(f"flip {k}:{bit}")
        elif kind == 1:  # boundary values
            value = int(rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF]))
            width = int(rng.integers(1, 9))
            out[at : at + width] = bytes([value]) * len(out[at : at + width])
            done.append(f"set {at}+{width}={value:#04x}")
        elif kind == 2:  # truncate
            at = int(rng.integers(n))
            del out[at:]
            done.append(f"truncate {at}")
        elif kind == 3:  # zero a range
            width = int(rng.integers(1, 513))
            out[at : at + width] = bytes(len(out[at : at + width]))
            done.append(f"zero {at}+{width}")
        else:  # insert junk
            junk = rng.bytes(int(rng.integers(1, 65)))
            out[at:at] = junk
            done.append(f"insert {at}+{len(junk)}")
    return bytes(out), done


@dataclass
class Example:
    index: int
    path: str
    options: dict[str, Any]
    mutations: list[str]


@dataclass
class Report:
    """What the fuzzing of one kind of file saw."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    native: list[str] = field(default_factory=list)  # crashes and hangs of a library alone
    children: int = 0


def run_child(examples: list[Example]) -> tuple[dict[int, dict[str, Any]], int | None, int, str]:
    """Run one child over ``examples``: (outcomes by position; the position it was at
    when it died or hung, or None; its return code, ``HUNG`` if it was killed after
    ``INPUT_TIMEOUT`` seconds on one input; the end of its stderr)."""
    jobs_file = Path(examples[0].path).with_suffix(".jobs.json")
    jobs_file.write_text(json.dumps([{"path": e.path, "options": e.options} for e in examples]))
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(
            [sys.executable, str(CHILD), str(jobs_file)],
            stdout=subprocess.PIPE,
            stderr=stderr_file,
        )
        assert process.stdout is not None
        outcomes: dict[int, dict[str, Any]] = {}
        current, pending, hung = None, b"", False
        while True:  # a line at the start and at the end of each input; silence is a hang
            ready, _, _ = select.select([process.stdout], [], [], INPUT_TIMEOUT)
            if not ready:
                process.kill()
                hung = True
                break
            chunk = os.read(process.stdout.fileno(), 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                record = json.loads(line)
                if "done" in record:
                    outcomes[record["done"]] = record["outcome"]
                    current = None
                else:
                    current = record["start"]
        code = process.wait()
        process.stdout.close()
        stderr_file.seek(0)
        stderr = stderr_file.read().decode(errors="replace")[-4000:]
    if not hung and code == 0 and current is None and len(outcomes) == len(examples):
        return outcomes, None, 0, ""
    return outcomes, current, HUNG if hung else code, stderr


def plain_failures(kind: str, path: str) -> list[str]:
    """The native libraries that crash (die by a signal) or hang reading ``path`` alone."""
    found = []
    for library in PLAIN_READERS[kind]:
        try:
            result = subprocess.run(
                [sys.executable, str(CHILD), "--plain", library, path],
                capture_output=True,
                timeout=INPUT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            found.append(f"{library} hangs")
            continue
        if result.returncode < 0:
            found.append(f"{library} crashes ({signal.Signals(-result.returncode).name})")
    return found


def judge(outcome: dict[str, Any]) -> str | None:
    """Why an outcome is a failure, or None if it is acceptable."""
    if outcome["status"] == "ok":
        return None
    if not any(name in outcome["mro"] for name in ACCEPTED):
        return f"{outcome['type']} is not a clean error for a damaged file"
    if not outcome["names_path"]:
        return f"{outcome['type']} does not name the file"
    return None


def keep(example: Example, why: str, folder: Path) -> str:
    """Copy a failing input to ``folder``; a line for the report."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / Path(example.path).name
    shutil.copy(example.path, kept)
    return f"{kept} {example.options} {example.mutations}: {why}"


def fuzz(kind: str, examples: list[Example], save: Path, report: Report) -> None:
    """Run ``examples`` in children of ``BATCH`` inputs; fill ``report``. When a child
    dies or hangs, the input it was at is run again alone, then (if it fails alone too)
    read by the native libraries alone; the rest of the batch goes on in a new child."""
    pending = list(examples)
    while pending:
        batch, pending = pending[:BATCH], pending[BATCH:]
        outcomes, at, code, stderr = run_child(batch)
        report.children += 1
        for position, outcome in outcomes.items():
            report.outcomes[outcome.get("type", "ok")] += 1
            why = judge(outcome)
            if why is not None:
                message = outcome["message"][:300]
                report.failures.append(keep(batch[position], f"{why}: {message}", save))
        if at is None and code == 0:
            continue
        if at is None:  # died between inputs (at exit, or before the first)
            report.failures.append(
                f"a child of the {kind} batch from {batch[0].path} exited with {code} after "
                f"{len(outcomes)} of {len(batch)} inputs: {stderr[-1500:]}"
            )
            continue
        suspect = batch[at]
        pending = batch[at + 1 :] + pending
        alone, _, alone_code, alone_err = run_child([suspect])  # does it fail alone?
        report.children += 1
        if alone:  # it did not: an earlier input of the batch left the failure behind
            report.outcomes[alone[0].get("type", "ok")] += 1
            report.failures.append(
                keep(suspect, f"a child failed ({code}) here but not on it alone", save)
                + f"; batch: {[e.path for e in batch[: at + 1]]}; stderr: {stderr[-1500:]}"
            )
            continue
        what = "hang" if alone_code == HUNG else "crash"
        report.outcomes[what] += 1
        native = plain_failures(kind, suspect.path)
        if native:
            line = keep(suspect, f"{what}; {', '.join(native)} alone too", save / "native")
            report.native.append(line)
        else:
            report.failures.append(
                keep(suspect, f"{what} ({alone_code}) in xrdist, not in the library alone", save)
                + f"; stderr: {alone_err[-2000:]}"
            )


def examples_for(kind: str, seed_file: Path, count: int, seed: int, folder: Path) -> list[Example]:
    """The unmutated seed, then ``count`` mutated copies (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    data = seed_file.read_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count + 1):
        mutated, done = (data, []) if i == 0 else mutate(data, rng)
        options = OPTIONS[kind][int(rng.integers(len(OPTIONS[kind])))]
        path = folder / f"{kind}-{seed}-{i:05d}{seed_file.suffix}"
        path.write_bytes(mutated)
        out.append(Example(i, str(path), options, done))
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_mutated_files_load_or_raise_clean_errors_naming_them(
    kind: str,
    seeds: dict[str, Path],
    tmp_path: Path,
    fuzz_examples: int,
    fuzz_seed: int,
    figures: Any,
) -> None:
    """Every mutated file either loads or raises an accepted exception that names it; no
    crash or hang of xrdist. Crashes and hangs of a native library alone are reported."""
    examples = examples_for(kind, seeds[kind], fuzz_examples, fuzz_seed, tmp_path / "inputs")
    report = Report()
    save = KEEP / f"{kind}-seed{fuzz_seed}"
    fuzz(kind, examples, save, report)
    assert report.outcomes["ok"] >= 1  # the unmutated seed, at least, loads
    total = sum(report.outcomes.values())
    figures.unit, figures.operations = "opens and loads", total
    figures.files = figures.fuzzed = len(examples)
    figures.processes = report.children
    figures.failures = len(report.failures)
    loaded = report.outcomes["ok"]
    failed = report.outcomes["crash"] + report.outcomes["hang"]
    figures.notes.update(
        loaded=loaded,
        clean_errors=total - loaded - failed,
        native_library_faults=len(report.native),
    )
    print(f"\n{kind} outcomes: {dict(report.outcomes.most_common())}")
    for line in report.native:
        print(f"native-library fault (not xrdist's, documented): {line}")
        warnings.warn(f"native-library fault, input kept: {line}", stacklevel=1)
    assert total == len(examples)
    assert not report.failures, "\n".join(report.failures[:20])


# -- format detection, in process (pure Python: no native code is reached) -------------

MAGICS = [b"", HDF5_MAGIC, *NETCDF3_MAGICS, *TIFF_MAGICS, b"CDF", b"\x89HDF", b"II*"]


def test_format_detection_of_arbitrary_bytes(
    tmp_path: Path, fuzz_examples: int, fuzz_seed: int, figures: Any
) -> None:
    """Whatever the bytes (a signature, a broken one, an HDF5 signature behind a user
    block, nothing), detection reads them without error, ``guess_can_open`` never raises,
    and ``check_readable`` returns the format the signature says or raises a
    ``ValueError`` that names the file and shows its first bytes."""
    folder = tmp_path / "bytes"
    folder.mkdir()
    seen: Counter[str] = Counter()
    entry = XrdistBackendEntrypoint()

    @settings(
        max_examples=4 * fuzz_examples,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis_seed(fuzz_seed)
    @given(
        prefix=st.sampled_from(MAGICS),
        body=st.binary(max_size=64),
        block=st.sampled_from([0, 0, 512, 1024, 2048]),
    )
    def check(prefix: bytes, body: bytes, block: int) -> None:
        data = prefix + body
        if block:  # an HDF5 signature after a user block of ``block`` bytes
            data = (data + bytes(block))[:block] + HDF5_MAGIC + body
        path = folder / f"f{seen.total():06d}.bin"
        path.write_bytes(data)
        assert isinstance(entry.guess_can_open(str(path)), bool)
        found = sniff_format(str(path))
        if data.startswith(NETCDF3_MAGICS):
            assert found == "netcdf3"
        elif data.startswith(TIFF_MAGICS):
            assert found == "tiff"
        elif data.startswith(HDF5_MAGIC) or (block and len(data) >= block + 8):
            assert found == "hdf5"
        try:
            assert check_readable(str(path)) == found
        except ValueError as err:
            assert found is None and str(path) in str(err), err
            assert ("is empty" if not data else repr(data[:8])) in str(err), err
        seen[found or "none"] += 1

    check()
    figures.unit, figures.operations = "detections", seen.total()
    figures.files = figures.fuzzed = seen.total()
    figures.notes.update(dict(seen))
    assert seen["none"] and seen["hdf5"] and seen["netcdf3"] and seen["tiff"]
