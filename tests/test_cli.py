"""The command line: the README's main job and the cache demo, run as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr


def xrdist(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xrdist.cli", *args], cwd=cwd, capture_output=True, text=True
    )


@pytest.mark.timeout(300)
def test_demo_prints_the_table_and_writes_the_png(tmp_path):
    out = xrdist("demo", "--dates", "6", "--size", "64", "--folder", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| xrdist |" in out.stdout and "| xarray |" in out.stdout
    assert "DIFFERS" not in out.stdout
    assert "refl: direct" in out.stdout  # the planner's explanation
    assert (tmp_path / "out" / "composite.png").stat().st_size > 10_000
    assert len(list((tmp_path / "out" / "stack").glob("scene_*.nc"))) == 6


def test_cache_demo_checks_every_value(tmp_path):
    out = xrdist("cache-demo", "--files", "20", "--passes", "2", "--cache-size", "4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "h5py" in out.stdout and "netCDF4" in out.stdout
    assert " 40 " in out.stdout  # 20 files x 2 passes, every value checked


def test_info_shows_variables_chunks_and_the_plan(tmp_path):
    from xrdist.synthetic import write_stack

    write_stack(tmp_path / "s", dates=4, size=64, tile=32)
    out = xrdist(
        "info", str(tmp_path / "s" / "scene_*.nc"), "--chunks", "time=-1,y=40,x=40", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "4 files stacked along 'time'" in out.stdout
    assert "| refl | time, y, x | (1, 64, 64) | uint16 | (1, 32, 32) | zlib+shuffle" in out.stdout
    assert "| byte ranges |" in out.stdout and "compiled chunk reads: available" in out.stdout
    assert "refl: rechunk" in out.stdout and "amplification 2.25 > 1.5" in out.stdout
    single = xrdist("info", str(next((tmp_path / "s").glob("*.nc"))), cwd=tmp_path)
    assert single.returncode == 0 and "read with h5py" in single.stdout
    xr.open_dataset(next((tmp_path / "s").glob("*.nc"))).to_netcdf(
        tmp_path / "v3.nc", format="NETCDF3_64BIT"
    )
    classic = xrdist("info", str(tmp_path / "v3.nc"), cwd=tmp_path)
    assert "read with netcdf4" in classic.stdout and "| netCDF-C |" in classic.stdout
    # an unquoted glob (the shell's list of files) and a budget with units
    files = sorted(str(p) for p in (tmp_path / "s").glob("*.nc"))
    listed = xrdist("info", *files, "--max-mem", "64MiB", cwd=tmp_path)
    assert listed.returncode == 0 and "4 files stacked along 'time'" in listed.stdout
    assert "max_mem 64.0 MiB" in listed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nothing-here/*.nc"], "no files match the pattern 'nothing-here/*.nc'"),
        (["s/*.nc", "--chunks", "time=-1,lat=50"], "dimensions ['lat'] that the dataset"),
        (["s/*.nc", "--max-mem", "lots"], "max_mem='lots': give a positive number"),
    ],
)
def test_info_errors_are_one_line_naming_what_to_fix(tmp_path, args, message):
    from xrdist.synthetic import write_stack

    write_stack(tmp_path / "s", dates=2, size=32, tile=16)
    out = xrdist("info", *args, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("xrdist info: error: ") and message in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("fmt", "baseline", "variable", "folder"),
    [
        ("cog", "rioxarray", "band_data", "stack-cog-3bands"),
        ("netcdf", "xarray", "refl", "stack-3bands"),
    ],
)
def test_demo_with_bands_compares_with_the_baseline(tmp_path, fmt, baseline, variable, folder):
    """Three bands per date: multi-band COGs against rioxarray, a band dimension in
    netCDF against xarray; the composite of every band is computed."""
    out = xrdist(
        *("demo", "--format", fmt, "--bands", "3", "--dates", "5", "--size", "64"),
        *("--folder", "out"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3 bands of 64x64" in out.stdout
    assert "| xrdist |" in out.stdout and f"| {baseline} |" in out.stdout
    assert "DIFFERS" not in out.stdout and "same" in out.stdout
    assert f"{variable}: direct" in out.stdout
    assert "3 tasks" in out.stdout  # one read task per band
    assert (tmp_path / "out" / "composite.png").stat().st_size > 10_000
    assert len(list((tmp_path / "out" / folder).glob("scene_*"))) == 5
