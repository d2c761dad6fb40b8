"""``xrdist bench`` on a tiny stack, as CI runs it: every method in a fresh process, the
results agree, and the JSON, markdown and plot hold what the docs page is made of."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = (
    "wall_s",
    "open_s",
    "process_s",
    "peak_rss_tree",
    "base_rss_tree",
    "tasks",
    "rchar",
    "checksum",
    "nan_count",
    "digest",
    "other_cpu_share",
)


@pytest.mark.timeout(120)
def test_tiny_bench_agrees_and_xrdist_needs_fewer_tasks(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "xrdist.cli",
            "bench",
            "--dates",
            "6",
            "--size",
            "64",
            "--layouts",
            "tiles,cog",
            "--methods",
            "xrdist,netcdf4,rioxarray",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            "out/bench.json",  # a folder made before the runs
            "--markdown",
            "bench.md",
            "--plot",
            "bench.png",
            "--xrdist-option",  # the compiled chunk reads, whatever the stack's size
            "compiled_reads=True",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["xarray"]
    assert report["command"].startswith("xrdist bench --dates 6 --size 64")
    assert list(report["layouts"]) == ["tiles", "cog"]
    checksums = set()
    for layout, baseline in (("tiles", "netcdf4"), ("cog", "rioxarray")):
        entry = report["layouts"][layout]
        assert entry["problems"] == []
        results = {r["method"]: r for r in entry["results"]}
        assert list(results) == ["xrdist", baseline]  # netcdf4 reads no COGs, rioxarray no netCDF
        for r in results.values():
            assert r["ok"], r.get("stderr")
            assert all(field in r for field in FIELDS), sorted(r)
            assert r["peak_rss_tree"] > 50 * 2**20 and r["files"] == 6
        x, b = results["xrdist"], results[baseline]
        assert x["checksum"] == pytest.approx(b["checksum"], rel=1e-6)
        assert x["nan_count"] == b["nan_count"]
        assert x["tasks"] < b["tasks"], (x["tasks"], b["tasks"])
        # each file once for reading, plus once by netCDF-C to describe a netCDF-4 file
        assert x["opens"] == (12 if layout == "tiles" else 6)
        assert x["plan"]["strategy"] == "direct"
        checksums |= {round(r["checksum"], 3) for r in results.values()}
    assert len(checksums) == 1  # the COGs hold the netCDF stack's values
    assert "| xrdist |" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_xrdist_options_parse_as_python_literals_or_text():
    import argparse

    from xrdist.bench import option_setting

    assert option_setting("compiled_reads=True") == ("compiled_reads", True)
    assert option_setting(" read_threads = 4") == ("read_threads", 4)
    assert option_setting("compiled_reads=auto") == ("compiled_reads", "auto")
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=VALUE"):
        option_setting("compiled_reads")


def test_unknown_method_is_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "xrdist.cli", "bench", "--methods", "xrdist,gdal"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "unknown method(s) ['gdal']" in out.stderr


def test_disagreeing_results_are_reported():
    from xrdist import bench

    good = {"method": "xrdist", "ok": True, "checksum": 100.0, "nan_count": 3}
    rows = [
        dict(good, peak_rss_tree=0, process_s=1.0, tree_cpu_s=1.0, other_cpu_share=0.0),
        dict(good, method="netcdf4", checksum=100.1, peak_rss_tree=0, process_s=1.0),
    ]
    rows[1].update(tree_cpu_s=1.0, other_cpu_share=0.0)
    assert bench.problems(rows)[0].startswith("MISMATCH: netcdf4")
    assert "DIFFERS" in bench.table(rows)
    failed = {"method": "h5netcdf", "ok": False, "error": "exit code 1"}
    assert bench.problems([good, failed]) == ["h5netcdf FAILED: exit code 1"]


def test_reports_merge_later_layouts_replace_earlier(tmp_path):
    from argparse import Namespace

    from xrdist import bench

    def report(command, layouts, wall):
        row = {"method": "xrdist", "ok": True, "checksum": 1.0, "nan_count": 0}
        row.update(wall_s=wall, peak_rss_tree=2**28, process_s=1.0, tree_cpu_s=1.0)
        row["other_cpu_share"] = 0.0
        return {
            "command": command,
            "args": {"dates": 6, "size": 64},
            "machine": {
                "cpu_count": 2,
                "ram_bytes": 2**30,
                "python": "3",
                "platform": "p",
                "versions": {},
                "xrdist": "/x (git abc)",
            },
            "layouts": {
                name: {
                    "description": name,
                    "table": bench.table([row]),
                    "notes": [],
                    "problems": [],
                    "results": [row],
                }
                for name in layouts
            },
            "problems": [],
        }

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(report("xrdist bench A", ["tiles", "cog"], 9.0)))
    second.write_text(json.dumps(report("xrdist bench B", ["tiles"], 3.0)))
    merged = bench.merge_reports([str(first), str(second)])
    assert list(merged["layouts"]) == ["tiles", "cog"]
    assert merged["layouts"]["tiles"]["results"][0]["wall_s"] == 3.0
    text = bench.markdown(merged)
    assert "`xrdist bench A`: cog" in text and "`xrdist bench B`: tiles" in text
    assert "xrdist: git abc" in text
    args = Namespace(json=None, markdown=str(tmp_path / "m.md"), plot=None)
    assert bench.write_outputs(merged, args) == 0 and (tmp_path / "m.md").exists()
