"""End to end on a real distributed.LocalCluster with worker processes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster
from test_mfdataset import NY, TILE, reference, write_stack

import xrdist

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    return write_stack(tmp_path_factory.mktemp("dstack"), dates=12)


def test_median_on_cluster_is_identical_to_threaded(client, stack):
    """Same result as the threaded run and as xarray's; files are described on the
    workers; each worker opens each file at most once for reading (plus one netCDF-C
    open per file, on the worker that describes it)."""
    chunks = {"time": -1, "y": TILE, "x": TILE}
    client.run(xrdist.clear_cache)
    client.run(xrdist.reset_cache_info)
    ds = xrdist.open_mfdataset(stack, chunks=chunks)
    assert ds.encoding["xrdist_plan"].variables["refl"].strategy == "direct"
    median = ds.refl.median("time")
    on_cluster = client.compute(median).result()
    threaded = median.compute(scheduler="threads")
    xr.testing.assert_identical(on_cluster, threaded)
    theirs = reference(stack, chunks).refl.median("time").compute(scheduler="threads")
    xr.testing.assert_allclose(on_cluster, theirs)
    infos = client.run(xrdist.cache_info).values()
    assert sum(i.opens for i in infos) <= len(stack) * (len(infos) + 1)
    assert sum(i.hits for i in infos) > 0
    assert all(i.open_errors == 0 and i.leased_now == 0 for i in infos)


def test_unaligned_chunks_use_p2p_rechunk_on_a_cluster(client, stack):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xrdist.AmplificationWarning)
        ds = xrdist.open_mfdataset(stack, chunks={"time": -1, "y": 20, "x": 13})
    plan = ds.encoding["xrdist_plan"].variables["refl"]
    assert (plan.strategy, plan.rechunk_method) == ("rechunk", "p2p")
    layers = ds.refl.data.__dask_graph__().layers
    assert any("rechunk-p2p" in name or "rechunk-transfer" in name for name in layers)
    result = client.compute(ds.refl.mean("time")).result()
    expected = reference(stack).refl.mean("time").compute(scheduler="threads")
    xr.testing.assert_allclose(result, expected)
    assert result.shape == (NY, 40) and np.isfinite(result).all()
    # the P2P rechunk moved the stored uint16 values; decoded after, bitwise xarray's
    moved = client.compute(ds.refl).result()
    np.testing.assert_array_equal(moved.values, reference(stack).refl.values)


def test_a_worker_reads_with_its_own_threads_not_every_cpu():
    """Reader threads default to the worker's threads: readers per CPU of the machine in
    each of several workers would put workers x CPUs threads on the cores."""
    from dask.system import CPU_COUNT

    from xrdist.array import reader_threads

    threads = 3 if CPU_COUNT != 3 else 2
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        Client(cluster) as c,
    ):
        assert c.submit(reader_threads, pure=False).result() == threads
        assert c.run(reader_threads).popitem()[1] == CPU_COUNT  # outside a task
        c.run(xrdist.set_options, read_threads=1)  # the option wins
        assert c.submit(reader_threads, pure=False).result() == 1
    assert reader_threads() == CPU_COUNT  # here: no worker
