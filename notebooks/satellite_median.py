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
# # A cloud-free median of a satellite stack
#
# The job xrdist exists for: one file per date, clouds as nodata, and a median over time
# per pixel. Every output chunk needs every date, so the chunks we want span all files.
# `xrdist.open_mfdataset` reads each such chunk straight from the files; plain
# `xr.open_mfdataset(...).chunk(...)` reads file by file and rechunks. This notebook
# writes a small synthetic stack, shows xrdist's read plan, computes and plots the
# median, and checks it against plain xarray.

# %%
import tempfile
from pathlib import Path

import dask
import matplotlib
import numpy as np
import xarray as xr

import xrdist
from xrdist.synthetic import write_stack

matplotlib.use("Agg")  # write PNGs; in Jupyter, drop this line to see the figures inline
import matplotlib.pyplot as plt

folder = Path(tempfile.mkdtemp(prefix="xrdist-median-"))
paths = write_stack(folder / "nc", dates=24, size=256, tile=128)
print(len(paths), "files, e.g.", Path(paths[0]).name)

# %% [markdown]
# ## Open and plan
#
# We ask for chunks that hold the whole time series of a 128 x 128 window. The plan says
# how each variable will be read: `direct` means one task per output chunk, reading its
# window from all 24 files, with an amplification (bytes decoded / bytes needed) of 1.

# %%
chunks = {"time": -1, "y": 128, "x": 128}
ds = xrdist.open_mfdataset(paths, chunks=chunks)
print(ds.refl)
print(ds.encoding["xrdist_plan"])

# %% [markdown]
# The planner is a pure function: `xrdist.plan` answers the same question without opening
# a dataset, for any chunks. Chunks of 96 x 96 cut the files' 128 x 128 on-disk tiles
# and would decode 4 times what they use, so the planner reads aligned chunks and
# rechunks instead; `chunks="auto"` picks aligned chunks in the first place.

# %%
print(xrdist.plan(paths, chunks={"time": -1, "y": 96, "x": 96}))
print(xrdist.plan(paths, chunks="auto"))

# %% [markdown]
# ## The median, and a picture

# %%
median = ds.refl.median("time")
composite = median.compute()
cloudy = int(ds.refl.isnull().sum(("y", "x")).argmax("time"))

fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
for ax, image, title in [
    (axes[0], ds.refl.isel(time=cloudy), f"{str(ds.time.values[cloudy])[:10]}: clouds"),
    (axes[1], composite, f"median of {ds.sizes['time']} dates"),
]:
    shown = ax.imshow(image.values, vmin=0.0, vmax=0.6, cmap="viridis")
    ax.set_title(title)
    ax.set_axis_off()
fig.colorbar(shown, ax=axes, shrink=0.8, label="reflectance")
picture = folder / "median.png"
fig.savefig(picture, dpi=72)
plt.close(fig)
print("picture:", picture)

# %% [markdown]
# ## Against plain xarray
#
# The same median with `xr.open_mfdataset` and a rechunk: the values are identical; the
# graph is not. xrdist has one task per output chunk (plus the median's own); xarray has
# a task per file and on-disk chunk, then the concatenation and the rechunk.

# %%
baseline = xr.open_mfdataset(paths, chunks={}).chunk(chunks)
reference = baseline.refl.median("time")
xr.testing.assert_identical(composite, reference.compute())


def tasks(array: xr.DataArray) -> int:
    return len(dask.optimize(array.data)[0].__dask_graph__())


print(f"tasks: xrdist {tasks(median)}, xarray {tasks(reference)}")
assert tasks(median) < tasks(reference)

# %% [markdown]
# ## The same stack as Cloud-Optimized GeoTIFFs
#
# `write_stack(..., file_format="cog")` writes the same values as COGs (one band, times
# in the DateTime tags). xrdist reads their tiles by byte range, and the plan and the
# median are the same; the variable is rioxarray's `band_data(time, band, y, x)`.

# %%
cogs = write_stack(folder / "cog", dates=24, size=256, tile=128, file_format="cog")
stack = xrdist.open_mfdataset(cogs, chunks={"time": -1, "band": 1, "y": 128, "x": 128})
print(stack.encoding["xrdist_plan"])
from_cogs = stack.band_data.median("time").isel(band=0).compute()
np.testing.assert_array_equal(from_cogs.values, composite.values)
print("COG median equals the netCDF median:", from_cogs.shape)
