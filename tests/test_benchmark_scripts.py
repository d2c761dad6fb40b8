"""The benchmark scripts under ``benchmarks/`` run to the end on tiny inputs and print
their tables (their figures are for the benchmarks page, not for tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from xrdist.synthetic import write_stack

pytestmark = pytest.mark.timeout(300)

SCRIPTS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("reduction", ["sum", "max"])
def test_read_scaling(tmp_path: Path, reduction: str) -> None:
    write_stack(tmp_path, dates=4, size=64, tile=32)
    out = _run(
        str(SCRIPTS / "read_scaling.py"), str(tmp_path), "--repeat", "1", "--chunk", "32",
        "--reduction", reduction,
    )  # fmt: skip
    assert f"reduction: {reduction}" in out
    rows = ("| byte-range, compiled | 2 |", "| byte-range, in Python | 1 |", "| h5py | 2 |")
    for row in (*rows, "| inflate |"):
        assert row in out, out
    assert "chunks at once" in out


def test_open_files(tmp_path: Path) -> None:
    out = _run(str(SCRIPTS / "open_files.py"), "--files", "3", "--workdir", str(tmp_path))
    assert "| what | seconds |" in out and "stack-xrdist" in out, out


def test_engine_read(tmp_path: Path) -> None:
    out = _run(
        str(SCRIPTS / "engine_read.py"), "--size", "256", "--repeat", "1",
        "--workdir", str(tmp_path),
    )  # fmt: skip
    assert "xrdist" in out and "netcdf4" in out, out


def test_tiff_reads(tmp_path: Path) -> None:
    out = _run(
        str(SCRIPTS / "tiff_reads.py"), "--dates", "2", "--size", "256", "--window", "128",
        "--repeat", "1", "--workdir", str(tmp_path),
    )  # fmt: skip
    assert "xrdist" in out, out
