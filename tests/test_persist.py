"""The on-disk cache of file descriptions, across real processes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xrdist
from xrdist import persist
from xrdist.description import clear_descriptions, description_cache_info

OPEN_AND_COUNT = """
import json, sys, warnings
warnings.simplefilter("error", RuntimeWarning)
import xarray as xr, xrdist
from xrdist.description import description_cache_info
total = 0.0
how, paths = sys.argv[1], sys.argv[2:]
if how == "stack":
    with xrdist.open_mfdataset(paths, concat_dim="x", combine="nested") as ds:
        total = float(ds["v"].sum())
for path in paths if how != "stack" else []:
    options = {"mask_and_scale": False} if how == "mask_and_scale=False" else {}
    with xr.open_dataset(path, engine="xrdist", **options) as ds:
        total += float(ds["v"].sum())
print(json.dumps({**description_cache_info(), "total": total}))
"""


def run(paths: list[str], folder: Path, how: str = "one by one") -> dict[str, float]:
    env = {**os.environ, "XRDIST_CACHE_DIR": str(folder)}
    out = subprocess.run(
        [sys.executable, "-c", OPEN_AND_COUNT, how, *paths],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(path: Path, values: np.ndarray) -> str:
    xr.Dataset({"v": ("x", values)}).to_netcdf(path, engine="netcdf4")
    return str(path)


def test_a_new_process_loads_descriptions_instead_of_walking(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"f{i}.nc", np.arange(5.0) + i) for i in range(20)]
    first = run(paths, tmp_path / "cache")
    second = run(paths, tmp_path / "cache")
    assert (first["walks"], first["loaded"], first["datasets_loaded"]) == (20, 0, 0)
    # each file's decoded dataset is on disk too: not even the description is needed
    assert (second["walks"], second["loaded"], second["datasets_loaded"]) == (0, 0, 20)
    assert first["total"] == second["total"] == sum(10 + 5 * i for i in range(20))
    # other decoding options: the description is loaded and decoded anew, not walked
    raw = run(paths, tmp_path / "cache", "mask_and_scale=False")
    assert (raw["walks"], raw["loaded"], raw["datasets_loaded"]) == (0, 20, 0)
    assert raw["total"] == first["total"]
    # a stack loads the descriptions (its datasets are built from them)
    stack = run(paths, tmp_path / "cache", "stack")
    assert (stack["walks"], stack["loaded"]) == (0, 20)


def test_a_rewritten_file_is_walked_again_and_read_anew(tmp_path: Path) -> None:
    path = write(tmp_path / "f.nc", np.zeros(5))
    assert run([path], tmp_path / "cache")["total"] == 0
    write(tmp_path / "f.nc", np.ones(7))  # new size, identity and contents
    again = run([path], tmp_path / "cache")
    assert (again["walks"], again["loaded"], again["datasets_loaded"]) == (1, 0, 0)
    assert again["total"] == 7


def test_off_when_the_option_is_none(tmp_path: Path) -> None:
    path = write(tmp_path / "f.nc", np.zeros(3))
    with xrdist.set_options(description_cache_dir=None):
        clear_descriptions(disk=False)
        xr.open_dataset(path, engine="xrdist").close()
        assert persist.database_path() is None
    with xrdist.set_options(description_cache_dir=str(tmp_path / "c")):
        assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_an_unusable_folder_warns_once_and_files_still_open(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    path = write(tmp_path / "f.nc", np.arange(3.0))
    persist._warned[0] = False
    with xrdist.set_options(description_cache_dir=str(blocker / "cache")):
        clear_descriptions(disk=False)
        with pytest.warns(RuntimeWarning, match="description cache .* not usable"):
            ds = xr.open_dataset(path, engine="xrdist")
        assert float(ds.v.sum()) == 3.0
        ds.close()


def test_threads_and_processes_share_one_database(tmp_path: Path) -> None:
    paths = [write(tmp_path / f"f{i}.nc", np.arange(4.0)) for i in range(60)]
    folder = tmp_path / "cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_COUNT, "one by one", *paths[i::3]],
            env={**os.environ, "XRDIST_CACHE_DIR": str(folder)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    with xrdist.set_options(description_cache_dir=str(folder)):
        clear_descriptions(disk=False)
        with ThreadPoolExecutor(8) as pool:
            sums = list(
                pool.map(lambda p: float(xr.open_dataset(p, engine="xrdist").v.sum()), paths)
            )
    assert sums == [6.0] * 60
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        assert json.loads(out.strip().splitlines()[-1])["total"] == 6.0 * 20
    info = description_cache_info()
    assert info["walks"] + info["loaded"] + info["datasets_loaded"] >= 60
    assert run(paths, folder)["walks"] == 0


def _rows(folder: Path) -> int:
    with sqlite3.connect(folder / persist.DATABASE) as db:
        return db.execute("SELECT COUNT(*) FROM d").fetchone()[0]


def test_a_batch_is_written_in_one_go_when_it_ends(tmp_path: Path) -> None:
    from xrdist.identity import FileIdentity

    path = write(tmp_path / "f.nc", np.zeros(3))
    keys = [(path, FileIdentity.of(path), "test", f"g{i}") for i in range(50)]
    folder = tmp_path / "cache"
    with xrdist.set_options(description_cache_dir=str(folder)):
        persist.store((path, FileIdentity.of(path), "test", "before"), 0)  # written at once
        values = [{"i": i} for i in range(50)]
        with pytest.raises(KeyError), persist.batch():
            for key, value in zip(keys, values, strict=True):
                persist.store(key, value)
            values[0]["i"] = "changed after it was stored"  # pickled when stored: not kept
            assert [persist.load(key) for key in keys] == [{"i": i} for i in range(50)]
            assert _rows(folder) == 1  # not written yet
            raise KeyError("a failure later in the block")
        assert _rows(folder) == 51  # written even so, when the block ended
        assert [persist.load(key) for key in keys] == [{"i": i} for i in range(50)]


def _open_and_sum(path: str) -> float:
    with xr.open_dataset(path, engine="xrdist") as ds:
        return float(ds["v"].sum())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_pool_workers_keep_what_they_describe(tmp_path: Path) -> None:
    """Processes forked by multiprocessing end without running exit handlers: their
    values must be on disk by the time each open returns."""
    import multiprocessing

    paths = [write(tmp_path / f"f{i}.nc", np.arange(3.0) + i) for i in range(8)]
    folder = tmp_path / "cache"
    with xrdist.set_options(description_cache_dir=str(folder)):
        with multiprocessing.get_context("fork").Pool(2) as pool:
            sums = pool.map(_open_and_sum, paths)
        assert sums == [3.0 + 3 * i for i in range(8)]
        assert _rows(folder) == 16  # a description and a decoded dataset per file
