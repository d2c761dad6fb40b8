"""Running xarray's elementwise CF decoding inside xrdist's reads, file by file.

xarray decodes a variable lazily: masking (``_FillValue``/``missing_value``), scale and
offset and ``_Unsigned`` wrap the backend array in elementwise functions that run on the
whole requested window once it has been read. For a window that spans a stack of files
that means a raw buffer of the whole window, then two or three whole-window temporaries,
all made in the one thread that runs the dask task.

:func:`fuse_decoding` hands those same functions (xarray's own, unchanged) to a backend
array that can apply them to each file's part of the window as it is read
(``with_decoding``: :class:`~xrdist.array.StackArray`). The reader threads then decode
while they read, in cache-sized pieces and on every core, and no raw buffer of the whole
window exists. An elementwise function gives the same values on pieces as on the whole,
so results are bitwise identical; only functions known to be elementwise are moved
(:data:`ELEMENTWISE`), anything else leaves xarray's chain as it is.

Notes
-----
Pure: no I/O. The functions moved are ``functools.partial`` objects of module-level
xarray functions, so the arrays that carry them stay picklable.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
from xarray.coding import variables as cf_variables
from xarray.core import indexing

try:  # private in xarray: without it nothing is moved (the chain stays as xarray made it)
    from xarray.coding.common import _ElementwiseFunctionArray
except ImportError:  # pragma: no cover - depends on the xarray version
    _ElementwiseFunctionArray = None

#: The functions (wrapped in ``functools.partial``) that may run on pieces of a window:
#: masking, scale/offset and the ``_Unsigned`` reinterpretation.
ELEMENTWISE: tuple[Callable[..., Any], ...] = tuple(
    f
    for f in (
        getattr(cf_variables, "_apply_mask", None),
        getattr(cf_variables, "_scale_offset_decoding", None),
        np.asarray,
    )
    if f is not None
)


def elementwise_chain(data: Any) -> tuple[list[Callable[..., Any]], Any] | None:
    """xarray's lazily decoded ``data`` as (functions innermost first, the array they
    wrap), or None if any layer is not a known elementwise function."""
    if _ElementwiseFunctionArray is None:
        return None
    functions: list[Callable[..., Any]] = []
    node = data
    while isinstance(node, _ElementwiseFunctionArray):
        func = node.func
        if not (isinstance(func, functools.partial) and func.func in ELEMENTWISE):
            return None
        functions.append(func)
        node = node.array
    functions.reverse()
    return functions, node


def fuse_decoding(data: Any) -> Any:
    """``data`` with its elementwise decoding moved into the backend array's reads, or
    ``data`` itself when there is nothing to move or the array cannot take it."""
    found = elementwise_chain(data)
    if found is None or not found[0]:
        return data
    functions, node = found
    if not isinstance(node, indexing.LazilyIndexedArray):
        return data
    whole = (slice(None),) * len(node.array.shape)
    with_decoding = getattr(node.array, "with_decoding", None)
    if with_decoding is None or node.key.tuple != whole:
        return data
    return indexing.LazilyIndexedArray(with_decoding(tuple(functions), data.dtype))


def decode_into(
    functions: tuple[Callable[..., Any], ...], raw: np.ndarray, out: np.ndarray
) -> None:
    """Write ``functions`` applied in order to ``raw`` into ``out`` (a view of the
    caller's output; ``raw`` is broadcast to its shape as numpy's assignment would): the
    same values, bit for bit, as the functions themselves give.

    xarray's masking and scale/offset each copy their input and make temporaries
    (a converted copy, a comparison, a boolean-mask assignment, then another converted
    copy), and the result is then copied into the window. Here the same conversions and
    ufuncs run in place in ``out`` whenever its dtype is the step's dtype: one
    conversion, the comparisons, one masked fill, the multiply and the add. Any other
    function runs as it is. Thread-safe; writes only ``out``.
    """
    data = raw
    for function in functions:
        step = getattr(function, "func", None)
        if step is _APPLY_MASK:
            data = _mask_into(data, out, **function.keywords)  # type: ignore[attr-defined]
        elif step is _SCALE_OFFSET:
            data = _scale_offset_into(data, out, **function.keywords)  # type: ignore[attr-defined]
        else:
            data = function(data)
    if data is not out:
        out[...] = data


def converted_dtype(functions: tuple[Callable[..., Any], ...], raw: np.dtype) -> np.dtype | None:
    """The dtype that the first of ``functions`` converts data of dtype ``raw`` to (with
    numpy's unsafe cast) before working on it in place, or None when it does not start
    with such a conversion. Raw data converted to that dtype beforehand, in the output,
    goes through ``decode_into(functions, out, out)`` with the same result."""
    step = getattr(functions[0], "func", None) if functions else None
    keywords = getattr(functions[0], "keywords", {}) if functions else {}
    if step is _APPLY_MASK:
        return raw if keywords.get("dtype") is None else np.dtype(keywords["dtype"])
    if step is _SCALE_OFFSET:
        return np.dtype(keywords.get("dtype"))  # None: float64, as astype(None)
    return None


_APPLY_MASK = getattr(cf_variables, "_apply_mask", None)
_SCALE_OFFSET = getattr(cf_variables, "_scale_offset_decoding", None)


def _buffer(data: np.ndarray, out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``data`` converted to ``dtype`` (numpy's unsafe cast, as ``np.array(data,
    dtype)`` and ``astype`` do), in ``out`` when it has that dtype."""
    target = out if out.dtype == dtype else np.empty(data.shape, dtype)
    if target is not data:
        np.copyto(target, data, casting="unsafe")
    return target


def _mask_into(
    data: np.ndarray,
    out: np.ndarray,
    encoded_fill_values: Any,
    decoded_fill_value: Any,
    dtype: Any,
) -> np.ndarray:
    """xarray's ``_apply_mask``, in ``out`` when the dtypes allow."""
    data = _buffer(data, out, data.dtype if dtype is None else np.dtype(dtype))
    condition: np.ndarray | None = None
    for fv in encoded_fill_values or ():
        equal = data == _same_comparison(fv, data.dtype)
        condition = equal if condition is None else np.logical_or(condition, equal, out=condition)
    if condition is not None:
        np.copyto(data, decoded_fill_value, where=condition, casting="unsafe")
    return data


def _same_comparison(fill: Any, dtype: np.dtype) -> Any:
    """``fill`` as a scalar of ``dtype`` when comparing with it in ``dtype`` is what numpy
    does anyway (a numpy scalar whose type promotes to ``dtype``, so converts exactly):
    the same result, without numpy's slow loop for mixed types (a uint16 fill value
    against float32 data took three quarters of the masking time)."""
    if isinstance(fill, np.generic):
        try:
            if np.result_type(fill, dtype) == dtype:
                return dtype.type(fill)
        except TypeError:  # no common type: numpy's comparison says what it says
            pass
    return fill


def _scale_offset_into(
    data: np.ndarray, out: np.ndarray, scale_factor: Any, add_offset: Any, dtype: Any
) -> np.ndarray:
    """xarray's ``_scale_offset_decoding`` (``astype`` then in-place ``*=`` and
    ``+=``: the same ufunc calls), in ``out`` when the dtypes allow."""
    data = _buffer(data, out, np.dtype(dtype))  # astype(None) and np.dtype(None): float64
    if scale_factor is not None:
        np.multiply(data, scale_factor, out=data)
    if add_offset is not None:
        np.add(data, add_offset, out=data)
    return data


def decode_block(block: np.ndarray, functions: tuple[Callable[..., Any], ...], dtype: Any) -> Any:
    """``functions`` applied in order to one block of stored values, as a new array of
    ``dtype`` (for ``dask.array.map_blocks``: values rechunked as stored, decoded after).
    Picklable with its arguments; thread-safe."""
    out = np.empty(block.shape, dtype)
    decode_into(functions, block, out)
    return out


def stored_and_decoding(data: Any) -> tuple[Any, tuple[Callable[..., Any], ...]] | None:
    """For a variable's ``data`` that is a whole backend array whose reads decode (a
    :class:`~xrdist.array.StackArray` with decoding moved in): the same data lazily
    indexed as stored, and the decoding functions; else None."""
    if not isinstance(data, indexing.LazilyIndexedArray):
        return None
    array = data.array
    undecoded = getattr(array, "undecoded", None)
    functions = getattr(array, "decode", ())
    whole = (slice(None),) * len(array.shape)
    if undecoded is None or not functions or data.key.tuple != whole:
        return None
    return indexing.LazilyIndexedArray(undecoded()), tuple(functions)
