"""set_options / get_options."""

from __future__ import annotations

import resource

import pytest

import xrdist
from xrdist.options import default_file_cache_maxsize


def test_default_cache_size_is_half_the_soft_descriptor_limit():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_file_cache_maxsize() == max(8, min(1024, soft // 2))


def test_set_options_as_context_manager_restores():
    before = xrdist.get_options()
    with xrdist.set_options(file_cache_maxsize=7, warn_for_unclosed_files=True):
        assert xrdist.get_options()["file_cache_maxsize"] == 7
        assert xrdist.get_options()["warn_for_unclosed_files"] is True
    assert xrdist.get_options() == before


def test_set_options_as_a_call_sticks():
    before = xrdist.get_options()["file_cache_maxsize"]
    try:
        xrdist.set_options(file_cache_maxsize=11)
        assert xrdist.get_options()["file_cache_maxsize"] == 11
    finally:
        xrdist.set_options(file_cache_maxsize=before)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"file_cache_maxsize": 0}, "positive integer"),
        ({"file_cache_maxsize": True}, "positive integer"),
        ({"file_cache_maxweight": -5}, "positive integer or None"),
        ({"warn_for_unclosed_files": "yes"}, "True or False"),
        ({"compiled_reads": "yes"}, "True, False or 'auto'"),
        (
            {"no_such_option": 1},
            "not an xrdist option; valid options: byte_range_reads, compiled_reads, "
            "decode_in_readers, description_cache_dir, file_cache_maxsize",
        ),
    ],
)
def test_bad_options_are_refused_with_what_is_valid(kwargs, words):
    before = xrdist.get_options()
    with pytest.raises(ValueError, match=words):
        xrdist.set_options(**kwargs)
    assert xrdist.get_options() == before
