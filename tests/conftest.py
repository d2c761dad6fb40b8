"""Shared fixtures: factories for tiny real files, and checks for leaked descriptors/threads."""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The disk cache of file descriptions of this test run (and of the processes it starts)
# lives in a fresh folder, never in the user's ~/.cache. Set before xrdist is imported.
os.environ["XRDIST_CACHE_DIR"] = tempfile.mkdtemp(prefix="xrdist-test-descriptions-")

import h5py
import netCDF4
import numpy as np
import pytest

import xrdist


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--stress-seconds",
        type=float,
        default=3.0,
        help="how long each stress test runs (default 3 s; raise it for a soak)",
    )
    group = parser.getgroup("reliability", "the reliability suite (tests/test_reliability_*.py)")
    group.addoption(
        "--soak-seconds",
        type=float,
        default=5.0,
        help="how long the soak and the other long-capable reliability tests run (default 5 s)",
    )
    group.addoption(
        "--fuzz-examples",
        type=int,
        default=160,
        help="mutated files per seed format in the fuzz tests (default 160)",
    )
    group.addoption(
        "--fuzz-seed",
        type=int,
        default=0,
        help="seed of the fuzz tests' mutations (default 0: the same inputs on every run)",
    )


@pytest.fixture
def stress_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--stress-seconds"))


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    return float(request.config.getoption("--soak-seconds"))


@pytest.fixture
def fuzz_examples(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--fuzz-examples"))


@pytest.fixture
def fuzz_seed(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--fuzz-seed"))


@dataclass
class Figures:
    """What one reliability test did, counted while it ran (never typed in).

    ``operations`` are the test's own units (reads, computes, opens: ``unit`` says which),
    ``faults`` the faults it injected, ``fuzzed`` the inputs it fuzzed, ``failures`` the
    invariant violations it saw (the test asserts there are none). ``notes`` carries
    anything else worth a line in the report.
    """

    test: str
    unit: str = "operations"
    operations: int = 0
    files: int = 0
    threads: int = 0
    processes: int = 1
    faults: int = 0
    fuzzed: int = 0
    failures: int = 0
    seconds: float = 0.0
    notes: dict[str, object] = field(default_factory=dict)

    def line(self) -> str:
        notes = "".join(f", {k}: {v}" for k, v in self.notes.items())
        return (
            f"figures {self.test}: {self.operations} {self.unit}, {self.files} files, "
            f"{self.threads} threads, {self.processes} processes, {self.faults} faults "
            f"injected, {self.fuzzed} inputs fuzzed, failures: {self.failures}, "
            f"{self.seconds:.1f} s{notes}"
        )


FIGURES_KEY = pytest.StashKey[list[Figures]]()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A :class:`Figures` for this test to count into. At the end of the test its line is
    printed (shown with ``-s``) and kept for the table at the end of the session."""
    found = Figures(test=request.node.name)
    start = time.monotonic()
    yield found
    found.seconds = time.monotonic() - start
    print("\n" + found.line())
    request.config.stash.setdefault(FIGURES_KEY, []).append(found)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    """The figures of the reliability tests that ran, as one table (for docs/reliability.md)."""
    found = config.stash.get(FIGURES_KEY, [])
    if not found:
        return
    write = terminalreporter.write_line
    terminalreporter.section("reliability figures")
    write(
        "| test | operations | files | threads | processes | faults injected | inputs fuzzed "
        "| failures | seconds | notes |"
    )
    write("|---|---|---|---|---|---|---|---|---|---|")
    for f in found:
        row = asdict(f)
        notes = "; ".join(f"{k}: {v}" for k, v in f.notes.items())
        write(
            f"| {f.test} | {row['operations']:,} {f.unit} | {f.files:,} | {f.threads} | "
            f"{f.processes} | {f.faults:,} | {f.fuzzed:,} | {f.failures} | {f.seconds:.1f} "
            f"| {notes} |"
        )


def expected_values(i: int, n: int = 64) -> np.ndarray:
    """The data the factories write into file number ``i``: easy to check, distinct."""
    return np.arange(n, dtype="int64") + 1000 * i


@pytest.fixture
def make_h5(tmp_path: Path) -> Callable[..., list[str]]:
    """``make_h5(count)`` writes ``count`` HDF5 files with dataset ``x`` =
    ``expected_values(i)``; returns their paths."""

    def make(count: int, n: int = 64, prefix: str = "f") -> list[str]:
        paths = []
        for i in range(count):
            path = str(tmp_path / f"{prefix}{i:04d}.h5")
            with h5py.File(path, "w") as f:
                f["x"] = expected_values(i, n)
            paths.append(path)
        return paths

    return make


@pytest.fixture
def make_nc(tmp_path: Path) -> Callable[..., list[str]]:
    """``make_nc(count)`` writes ``count`` netCDF4 files with variable ``x`` (dim ``n``) =
    ``expected_values(i)``; returns their paths."""

    def make(count: int, n: int = 64, prefix: str = "g") -> list[str]:
        paths = []
        for i in range(count):
            path = str(tmp_path / f"{prefix}{i:04d}.nc")
            with netCDF4.Dataset(path, "w") as ds:
                ds.createDimension("n", n)
                ds.createVariable("x", "i8", ("n",))[:] = expected_values(i, n)
            paths.append(path)
        return paths

    return make


def open_fds() -> set[str]:
    """This process's open descriptors, as targets (files, sockets, pipes)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            pass
    return found


def _data_files(fds: set[str]) -> set[str]:
    return {fd for fd in fds if fd.endswith((".h5", ".nc", ".tif"))}


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves data files open or threads running.

    The process-wide cache is cleared first and last, so only handles the test left
    open *outside* the cache count as leaks.
    """
    xrdist.clear_cache()
    gc.collect()
    fds_before = _data_files(open_fds())
    threads_before = set(threading.enumerate())
    yield
    xrdist.clear_cache()
    gc.collect()
    deadline = time.monotonic() + 5
    while True:
        leaked_fds = _data_files(open_fds()) - fds_before
        leaked_threads = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
        if not (leaked_fds or leaked_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked_fds, f"descriptors leaked: {sorted(leaked_fds)}"
    assert not leaked_threads, f"threads leaked: {leaked_threads}"


@pytest.fixture
def global_cache() -> Iterator[xrdist.HandleManager]:
    """The process-wide manager, emptied and with zeroed counters, restored afterwards."""
    manager = xrdist.get_manager()
    manager.clear()
    manager.reset_info()
    yield manager
    manager.clear()
    manager.reset_info()
