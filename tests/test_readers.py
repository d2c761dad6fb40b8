"""run_in_readers: one window's files read on every core a task leaves idle, with real
threads; decode_batches: how a window's files are grouped for them."""

from __future__ import annotations

import threading
import time

import pytest

import xrdist
from xrdist.array import decode_batches, run_in_readers

pytestmark = pytest.mark.timeout(60)


def _io(seconds: float = 0.005) -> None:
    """A stand-in for a read: waits without holding the GIL."""
    time.sleep(seconds)


def _start_call(function, items, name: str | None = None) -> threading.Thread:
    """``run_in_readers(function, items)`` started in a thread of its own."""
    thread = threading.Thread(target=run_in_readers, args=(function, items), name=name)
    thread.start()
    return thread


def test_a_lone_call_reads_on_read_threads_threads_at_once() -> None:
    """Three items that each wait for the two others: they complete only if three
    threads (the caller and two readers) run them at the same time."""
    together = threading.Barrier(3, timeout=10)
    names: list[str] = []

    def item(_: int) -> None:
        names.append(threading.current_thread().name)
        together.wait()

    with xrdist.set_options(read_threads=3):
        run_in_readers(item, [0, 1, 2])
    assert threading.current_thread().name in names
    assert sum(n.startswith("xrdist-read") for n in names) == 2


def test_a_call_made_while_others_read_reads_alone() -> None:
    """With read_threads=2, a call that starts while another is reading gets no helper:
    the two calls already use both cores."""
    first_started, second_done = threading.Event(), threading.Event()
    second_names: list[str] = []

    def first_item(i: int) -> None:
        first_started.set()
        assert second_done.wait(10)

    def second_item(i: int) -> None:
        second_names.append(threading.current_thread().name)

    with xrdist.set_options(read_threads=2):
        first = _start_call(first_item, [0, 1])
        assert first_started.wait(10)

        def second() -> None:
            run_in_readers(second_item, list(range(20)))
            second_done.set()

        caller = threading.Thread(target=second, name="second-caller")
        caller.start()
        caller.join(10)
        first.join(10)
    assert second_names == ["second-caller"] * 20


def test_a_helper_makes_way_for_a_call_that_starts_after_it() -> None:
    """With read_threads=2, a lone call gets a helper; when a second call starts (dask
    starting its second task), the helper finishes the item it is in and takes no more:
    two calls and a helper would be three threads on two cores."""
    b_inside, a_done = threading.Event(), threading.Event()
    taken: list[tuple[int, str]] = []

    def a_item(i: int) -> None:
        taken.append((i, threading.current_thread().name))
        if i < 2:  # the caller and its helper each hold an item until b is inside its call
            assert b_inside.wait(10)
        else:  # long enough that a helper still taking items would take some
            _io()

    def b_item(_: int) -> None:
        b_inside.set()
        assert a_done.wait(10)

    def a() -> None:
        run_in_readers(a_item, list(range(20)))
        a_done.set()

    with xrdist.set_options(read_threads=2):
        first = threading.Thread(target=a, name="a-caller")
        first.start()
        for _ in range(1000):
            if len(taken) == 2:
                break
            time.sleep(0.01)
        assert len(taken) == 2, taken
        second = _start_call(b_item, [0], name="b-caller")
        first.join(10)
        second.join(10)
    helped = [i for i, name in taken if name.startswith("xrdist-read")]
    assert len(helped) == 1, taken
    assert sorted(i for i, _ in taken) == list(range(20))


def test_a_call_that_starts_while_another_has_helpers_shares_them() -> None:
    """With read_threads=4, a first call takes three helpers; a second call that starts
    later still gets help (the first call's helpers beyond its share make way), rather
    than reading alone to its end."""
    a_started = threading.Event()
    b_threads: set[str] = set()

    def a_item(_: int) -> None:
        a_started.set()
        _io()

    def b_item(_: int) -> None:
        b_threads.add(threading.current_thread().name)
        _io()

    with xrdist.set_options(read_threads=4):
        first = _start_call(a_item, list(range(200)))
        assert a_started.wait(10)
        time.sleep(0.05)  # the first call's helpers are at work
        run_in_readers(b_item, list(range(100)))
        first.join(10)
    assert len(b_threads) >= 2, b_threads


def test_helpers_come_back_to_a_call_when_another_ends() -> None:
    """With read_threads=4, a call shares the reader threads with a call that starts
    later, and gets them back once that one ends: the first call's last items are read
    by four threads again."""
    lock = threading.Lock()
    inside, most = [0], [0]
    b_done = threading.Event()
    late_a_threads: set[str] = set()

    def counted(work):
        def item(i: int) -> None:
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                work(i)
            finally:
                with lock:
                    inside[0] -= 1

        return item

    def a_item(i: int) -> None:
        if b_done.is_set():
            late_a_threads.add(threading.current_thread().name)
        _io()

    def b() -> None:
        run_in_readers(counted(lambda _: _io()), list(range(40)))
        b_done.set()

    with xrdist.set_options(read_threads=4):
        second = threading.Timer(0.03, b)
        second.start()
        run_in_readers(counted(a_item), list(range(300)))
        second.join(10)
    assert b_done.is_set()
    # The second call reads at once: one thread more until a helper ends its item.
    assert most[0] <= 5
    assert len(late_a_threads) == 4, late_a_threads


def test_the_first_error_propagates_not_the_callers_later_one() -> None:
    both = threading.Barrier(2, timeout=10)
    helper_failed = threading.Event()

    def item(_: int) -> None:
        both.wait()  # the caller and its helper each hold one item
        if threading.current_thread().name.startswith("xrdist-read"):
            helper_failed.set()
            raise ValueError("the helper's item, first")
        assert helper_failed.wait(10)
        raise RuntimeError("the caller's item, later")

    with xrdist.set_options(read_threads=2), pytest.raises(ValueError, match="first"):
        run_in_readers(item, [0, 1])


def test_a_caller_waiting_for_its_helpers_leaves_its_core_to_others() -> None:
    """read_threads=3: call A's caller has finished its item and waits while a helper
    reads A's other item; call B can then have a helper (B, A's helper and B's helper
    are three threads), which its two items need to run together."""
    a_waiting, b_done = threading.Event(), threading.Event()
    both_started = threading.Barrier(2, timeout=10)

    def a_item(_: int) -> None:
        both_started.wait()
        if threading.current_thread().name.startswith("xrdist-read"):
            assert b_done.wait(10)  # the long item, in the helper
        else:
            a_waiting.set()

    together = threading.Barrier(2, timeout=5)

    with xrdist.set_options(read_threads=3):
        first = _start_call(a_item, [0, 1])
        assert a_waiting.wait(10)
        time.sleep(0.05)  # A's caller is now waiting for its helper
        try:
            run_in_readers(lambda _: together.wait(), [0, 1])
        finally:
            b_done.set()
            first.join(10)


def test_a_call_still_planning_is_helped_when_another_ends() -> None:
    """Helpers are counted for a call once its items exist: a call whose ``items``
    function ran while another call held the threads still gets a helper after it."""
    a_done = threading.Event()
    together = threading.Barrier(2, timeout=5)

    def plan(readers: int) -> list[int]:
        assert a_done.wait(10)  # the other call has ended meanwhile
        return [0, 1]

    with xrdist.set_options(read_threads=2):
        first = threading.Thread(
            target=lambda: (
                run_in_readers(lambda _: _io(), list(range(20))),
                a_done.set(),
            )
        )
        first.start()
        run_in_readers(lambda _: together.wait(), plan)
        first.join(10)


def test_a_call_from_a_callers_own_item_runs_inline() -> None:
    """A caller already counts as a reading thread: a call nested in its item (a TIFF
    read by tiles inside a stack read) reads in that thread, not with helpers taken
    from other calls."""
    inner_names: set[str] = set()

    def outer(_: int) -> None:
        run_in_readers(lambda _: inner_names.add(threading.current_thread().name), range(9))

    with xrdist.set_options(read_threads=3):
        caller = _start_call(outer, [0], name="outer-caller")
        caller.join(10)
    assert inner_names == {"outer-caller"}


def test_a_call_ending_frees_cores_by_the_read_threads_of_the_calls_left() -> None:
    """A call made with read_threads=4 keeps one helper beside a read_threads=2 call;
    when that one ends, the helpers sent back follow the first call's 4, not the
    ending call's 2: the first call's last items are read by four threads."""
    a_started, b_done = threading.Event(), threading.Event()
    late_a_threads: set[str] = set()

    def a_item(_: int) -> None:
        a_started.set()
        if b_done.is_set():
            late_a_threads.add(threading.current_thread().name)
        _io()

    with xrdist.set_options(read_threads=4):
        first = _start_call(a_item, list(range(300)))
        assert a_started.wait(10)
        with xrdist.set_options(read_threads=2):
            run_in_readers(lambda _: _io(), list(range(10)))
        b_done.set()
        first.join(10)
    assert len(late_a_threads) == 4, late_a_threads


def test_a_call_with_one_read_thread_counts_as_reading() -> None:
    """A read_threads=1 call reads in its own thread, and the other calls count it: a
    read_threads=2 call beside it gets no helper."""
    a_started, b_done = threading.Event(), threading.Event()
    b_names: set[str] = set()

    def a_item(_: int) -> None:
        a_started.set()
        assert b_done.wait(10)

    def b_item(_: int) -> None:
        b_names.add(threading.current_thread().name)
        _io(0.002)

    with xrdist.set_options(read_threads=1):
        first = _start_call(a_item, [0])
        assert a_started.wait(10)
    with xrdist.set_options(read_threads=2):
        try:
            run_in_readers(b_item, list(range(20)))
        finally:
            b_done.set()
            first.join(10)
    assert b_names == {threading.current_thread().name}


def test_items_are_planned_for_the_threads_that_will_take_them() -> None:
    """``items`` as a function gets the number of threads that will take them: the
    caller and its helpers, or 1 for a call that reads alone."""
    planned: list[int] = []

    def plan(readers: int) -> list[int]:
        planned.append(readers)
        return list(range(30 * readers))

    with xrdist.set_options(read_threads=3):
        run_in_readers(lambda _: None, plan)
    with xrdist.set_options(read_threads=1):
        run_in_readers(lambda _: None, plan)
    assert planned == [3, 1]


def test_the_first_error_propagates_and_the_rest_is_skipped() -> None:
    done: list[int] = []

    def item(i: int) -> None:
        if i == 3:
            raise ValueError("item 3 failed")
        done.append(i)

    with xrdist.set_options(read_threads=2), pytest.raises(ValueError, match="item 3"):
        run_in_readers(item, list(range(200)))
    assert len(done) < 199


def test_a_reader_thread_never_waits_for_readers() -> None:
    """A nested call from a reader thread runs inline (else a full pool deadlocks)."""
    inner_names: list[str] = []

    def inner(_: int) -> None:
        inner_names.append(threading.current_thread().name)

    both = threading.Barrier(2, timeout=10)  # items 0 and 1 run on two threads at once

    def outer(_: int) -> None:
        both.wait()
        if threading.current_thread().name.startswith("xrdist-read"):
            run_in_readers(inner, [0, 1, 2])

    with xrdist.set_options(read_threads=2):
        run_in_readers(outer, [0, 1])
    assert inner_names and len(set(inner_names)) == 1


@pytest.mark.parametrize(
    ("runs", "position_bytes", "budget", "least", "want"),
    [
        ([], 4, 100, 2, []),
        ([(0, 1), (1, 2), (2, 3)], 10, 100, 1, [[(0, 1), (1, 2), (2, 3)]]),
        # the budget splits: 30 bytes fit, the fourth run would make 40
        ([(0, 1), (1, 2), (2, 3), (3, 4)], 10, 30, 1, [[(0, 1), (1, 2), (2, 3)], [(3, 4)]]),
        # at least 2 groups for 2 readers, although the budget would allow one
        ([(0, 1), (1, 2), (2, 3), (3, 4)], 10, 100, 2, [[(0, 1), (1, 2)], [(2, 3), (3, 4)]]),
        # a run longer than the budget is a group alone
        ([(0, 5), (5, 6), (6, 7)], 10, 20, 1, [[(0, 5)], [(5, 6), (6, 7)]]),
        # more groups wanted than runs: one run each
        ([(0, 2), (2, 4)], 1, 100, 8, [[(0, 2)], [(2, 4)]]),
    ],
)
def test_decode_batches_group_consecutive_runs(runs, position_bytes, budget, least, want):
    got = decode_batches(runs, position_bytes, budget, least)
    assert got == want
    assert [run for group in got for run in group] == runs  # every run once, in order


def test_callers_wanting_different_sizes_share_one_pool() -> None:
    """Threads of one process may want different reader counts (a distributed worker's
    tasks, the process's own threads): the pool grows to the largest and is kept, and
    each call gets at most its own count of threads."""
    from xrdist import array

    seen: list[set[str]] = []

    def read_with(threads: int) -> None:
        names: set[str] = set()
        with xrdist.set_options(read_threads=threads):
            run_in_readers(lambda _: names.add(threading.current_thread().name), range(50))
        seen.append(names)

    read_with(3)
    pool = array._pool
    for threads in (2, 3, 1, 2, 3):
        read_with(threads)
        assert array._pool is pool
    assert all(len(names) <= n for names, n in zip(seen, (3, 2, 3, 1, 2, 3), strict=True))
    assert seen[3] == {threading.current_thread().name}  # read_threads=1: the caller alone
