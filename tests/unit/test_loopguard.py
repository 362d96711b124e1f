"""The refresh's CPU work: short GIL slices while it runs, its survivors frozen after it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import weakref
from collections.abc import Iterator

import pytest

from exporter.loopguard import SWITCH_INTERVAL_S, RefreshWork


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Plain:
    pass


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_work_runs_with_the_short_switch_interval_and_the_previous_one_comes_back() -> None:
    before = sys.getswitchinterval()
    seen = RefreshWork().run(sys.getswitchinterval)
    assert seen == SWITCH_INTERVAL_S != before
    assert sys.getswitchinterval() == before


def test_the_previous_switch_interval_comes_back_when_the_work_fails() -> None:
    before = sys.getswitchinterval()

    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        RefreshWork().run(fails)
    assert sys.getswitchinterval() == before
    assert gc.isenabled()


def test_a_work_cancelled_while_it_runs_and_one_started_meanwhile_leave_the_process_as_found() -> (
    None
):
    """The refresher's task can be cancelled while its work runs in a thread: the thread goes
    on, the refresher's lock is free and the next refresh's work may start at once."""
    before = sys.getswitchinterval()
    running = threading.Event()
    release = threading.Event()

    def blocks() -> None:
        running.set()
        release.wait(5)

    async def scenario() -> list[bool]:
        first = asyncio.ensure_future(asyncio.to_thread(RefreshWork().run, blocks))
        await asyncio.to_thread(running.wait, 5)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(asyncio.to_thread(RefreshWork().run, gc.isenabled))
        await asyncio.sleep(0.05)
        assert not second.done()  # it waits for the first work's restore
        release.set()
        return [await second]

    assert asyncio.run(scenario()) == [False]  # asyncio.run waits for both threads
    assert sys.getswitchinterval() == before
    assert gc.isenabled()


def test_what_the_work_leaves_alive_is_frozen_and_still_freed_by_its_references() -> None:
    gc.unfreeze()
    kept: list[_Plain] = []
    RefreshWork().run(lambda: kept.append(_Plain()))
    assert gc.get_freeze_count() > 0
    reference = weakref.ref(kept[0])
    kept.clear()
    assert reference() is None


def test_a_cycle_frozen_dead_is_collected_once_the_full_collection_is_due() -> None:
    clock = _Clock()
    work = RefreshWork(full_collection_interval_s=60, clock=clock)
    cycle = _Cycle()
    reference = weakref.ref(cycle)
    work.settle()
    del cycle
    gc.collect()
    assert reference() is not None  # frozen: full passes skip it
    clock.now += 59
    work.settle()
    assert reference() is not None
    clock.now += 1
    work.settle()
    assert reference() is None


def test_no_automatic_collection_runs_during_the_work_and_it_is_on_again_after() -> None:
    assert gc.isenabled()
    assert RefreshWork().run(gc.isenabled) is False
    assert gc.isenabled()
