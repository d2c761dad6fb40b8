# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The handle cache in five minutes
#
# xrdist keeps one cache of open file handles per process. Readers *lease* a handle for
# the whole of a read, so the cache can never close a file that another thread is still
# reading. This notebook writes a few HDF5 files, reads them through a cache smaller than
# the number of files, and shows what the cache did.

# %%
import tempfile
from pathlib import Path

import h5py
import numpy as np

import xrdist

folder = Path(tempfile.mkdtemp(prefix="xrdist-notebook-"))
paths = []
for i in range(6):
    path = folder / f"scene_{i}.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(4) + 10 * i
    paths.append(path)

# %% [markdown]
# A `HandleProxy` names a file as (opener, path, mode, options). It holds no handle, and it
# pickles to a few hundred bytes, so it can travel to dask workers.

# %%
proxies = [xrdist.HandleProxy.create(h5py.File, p, lock=xrdist.library_lock("hdf5")) for p in paths]
import pickle  # noqa: E402

print(proxies[0], len(pickle.dumps(proxies[0])), "bytes pickled")

# %% [markdown]
# Read every file twice through a cache of 4 handles. The first lease of `scene_0` is held
# open across the whole loop: eviction closes idle handles only.

# %%
xrdist.clear_cache()
xrdist.reset_cache_info()
with xrdist.set_options(file_cache_maxsize=4), proxies[0].lease() as held:
    for _ in range(2):
        for proxy in proxies:
            with proxy.lease() as f:
                f["x"][:]
    assert held.id.valid  # still open: it is leased
    info = xrdist.cache_info()
    print(info)

# %% [markdown]
# `open_now` never exceeds `maxsize` plus the leased handles. After the block, the cache
# holds at most 4 handles again.

# %%
assert info.open_now <= max(info.maxsize, info.leased_now)
print(xrdist.cache_info())
xrdist.clear_cache()
