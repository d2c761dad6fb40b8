"""Labels of files along a new dimension: each file's time, and each file's band.

Scenes of a satellite stack carry their date in the file name (``S2_20240105_B04.tif``)
or in the TIFF ``DateTime`` tag, not in a coordinate; separate band files carry the band
in the name. :func:`file_times` turns one of

- a ``strptime`` format, searched for in each file's name (``"%Y%m%d"``),
- a regular expression whose first group (or group ``time``) is a date (``r"_(\\d{8})_"``),
- ``"tag"``: the TIFF ``DateTime`` tag,
- a sequence of values, one per file, or a callable ``path -> value``

into one ``datetime64`` per file, with errors that name the file that does not match.
:func:`band_of` extracts a band name with a regular expression.

Pure functions of paths and descriptions (no I/O); thread-safe.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from xrdist.description import FileDescription

#: The attribute of a TIFF's image variable that holds its DateTime tag.
TIFF_DATETIME_ATTR = "TIFFTAG_DATETIME"
TIFF_DATETIME_FORMAT = "%Y:%m:%d %H:%M:%S"

#: strptime directives and the text they match in a file name (zero-padded numbers, as
#: file names have them).
_DIRECTIVES = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "j": r"\d{3}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "f": r"\d{1,6}",
    "b": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]+",
    "%": "%",
}

TimesSpec = str | Sequence[Any] | Callable[[str], Any]


class LabelError(ValueError):
    """A file's label (time or band) cannot be found; the message names the file."""


def strptime_pattern(fmt: str) -> re.Pattern[str]:
    """A regular expression matching what ``datetime.strptime(text, fmt)`` accepts."""
    out, i = [], 0
    while i < len(fmt):
        if fmt[i] == "%" and i + 1 < len(fmt):
            code = fmt[i + 1]
            if code not in _DIRECTIVES:
                raise ValueError(f"times={fmt!r}: %{code} is not supported in file-name dates")
            out.append(_DIRECTIVES[code])
            i += 2
        else:
            out.append(re.escape(fmt[i]))
            i += 1
    return re.compile("".join(out))


def _parse(text: str, path: str, how: str) -> np.datetime64:
    """A date in one of the forms file names and tags use: ISO 8601, compact
    (``20240105``, ``20240105T103000``), year and day of year (``2024005``), or TIFF's."""
    for fmt in ("%Y%m%d", "%Y%m%dT%H%M%S", "%Y%j", TIFF_DATETIME_FORMAT):
        try:
            return np.datetime64(datetime.strptime(text, fmt), "ns")
        except ValueError:
            continue
    if not text.isdigit():  # numpy reads digits alone as a year
        try:
            return np.datetime64(text.replace("_", "-"), "ns")
        except ValueError:
            pass
    raise LabelError(f"{path!r}: {text!r} (found by {how}) is not a date xrdist can read")


def _time_from_name(path: str, spec: str) -> np.datetime64:
    name = os.path.basename(path)
    if "%" in spec:
        found = strptime_pattern(spec).search(name)
        if found is None:
            raise LabelError(
                f"{path!r}: its name has no date in the format times={spec!r}; pass a "
                "format that matches every file name (e.g. '%Y%m%d'), a regular "
                "expression, 'tag', or a list of times"
            )
        try:
            return np.datetime64(datetime.strptime(found.group(0), spec), "ns")
        except ValueError as err:
            raise LabelError(f"{path!r}: {found.group(0)!r} is not a date: {err}") from None
    try:
        pattern = re.compile(spec)
    except re.error as err:
        raise ValueError(
            f"times={spec!r} is neither a strptime format nor a regex: {err}"
        ) from None
    found = pattern.search(name)
    if found is None:
        raise LabelError(f"{path!r}: its name does not match times={spec!r}")
    text = (
        found.group("time")
        if "time" in pattern.groupindex
        else found.group(1 if pattern.groups else 0)
    )
    return _parse(text, path, f"times={spec!r}")


def _time_from_tag(description: FileDescription) -> np.datetime64:
    for var in description.variables.values():
        text = var.attrs.get(TIFF_DATETIME_ATTR)
        if text:
            return _parse(str(text).strip(), description.path, "its DateTime tag")
    raise LabelError(
        f"{description.path!r} has no DateTime tag; pass times= as a file-name format "
        "(e.g. '%Y%m%d') or a list of times"
    )


def has_time_tags(descriptions: Sequence[FileDescription]) -> bool:
    """Whether every file has a TIFF DateTime tag."""
    return all(
        any(v.attrs.get(TIFF_DATETIME_ATTR) for v in d.variables.values()) for d in descriptions
    )


def file_times(descriptions: Sequence[FileDescription], times: TimesSpec) -> np.ndarray:
    """One time per file (``datetime64[ns]``, or the given values), in the files' order."""
    paths = [d.path for d in descriptions]
    if isinstance(times, str):
        if times == "tag":
            return np.array([_time_from_tag(d) for d in descriptions])
        return np.array([_time_from_name(p, times) for p in paths])
    if callable(times):
        values = [times(p) for p in paths]
    else:
        values = list(times)
        if len(values) != len(paths):
            raise ValueError(
                f"times= has {len(values)} values for {len(paths)} files; pass one per file"
            )
    array = np.asarray(values)
    if array.dtype.kind in "OUM" and array.dtype.kind != "M":
        try:
            array = np.asarray(values, dtype="datetime64[ns]")
        except (ValueError, TypeError):
            pass
    return array


def band_of(path: str, bands: str) -> str:
    """The band name in a file's name: the first group (or group ``band``) of the
    regular expression ``bands``."""
    pattern = re.compile(bands)
    found = pattern.search(os.path.basename(path))
    if found is None:
        raise LabelError(
            f"{path!r}: its name does not match bands={bands!r}; the expression must find "
            r"the band in every file name (e.g. r'_(B\d\d)\.tif$')"
        )
    if "band" in pattern.groupindex:
        return found.group("band")
    return found.group(1 if pattern.groups else 0)
