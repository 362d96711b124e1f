"""The refresh's CPU work: short GIL slices while it runs, its survivors frozen after it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import sys
import threading
import weakref
from collections.abc import Callable, Iterator

import pytest

from exporter.loopguard import SWITCH_INTERVAL_S, LoopHandoff, RefreshWork, no_pace, paced


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
    seen = RefreshWork().run_here(lambda _: sys.getswitchinterval(), no_pace)
    assert seen == SWITCH_INTERVAL_S != before
    assert sys.getswitchinterval() == before


def test_the_previous_switch_interval_comes_back_when_the_work_fails() -> None:
    before = sys.getswitchinterval()

    def fails(_: object) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        RefreshWork().run_here(fails, no_pace)
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

    def blocks(_: object) -> None:
        running.set()
        release.wait(5)

    async def scenario() -> list[bool]:
        first = asyncio.ensure_future(RefreshWork().run(blocks))
        await asyncio.to_thread(running.wait, 5)
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(RefreshWork().run(lambda _: gc.isenabled()))
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
    RefreshWork().run_here(lambda _: kept.append(_Plain()), no_pace)
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
    assert RefreshWork().run_here(lambda _: gc.isenabled(), no_pace) is False
    assert gc.isenabled()


def test_the_work_waits_for_the_loop_to_turn_at_every_handoff() -> None:
    """Each handoff lets the loop run its own callbacks before the work goes on: a ticker
    task on the loop moves between any two steps of a work whose slices end at once."""

    async def scenario() -> tuple[list[int], int]:
        ticks = 0
        stop = False

        async def ticker() -> None:
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0)

        def work(pace: Callable[[], None]) -> list[int]:
            seen = []
            for _ in paced(range(20), pace):
                seen.append(ticks)
            return seen

        task = asyncio.ensure_future(ticker())
        handoff = LoopHandoff(asyncio.get_running_loop(), slice_s=0.0)
        seen = await asyncio.to_thread(work, handoff)
        stop = True
        await task
        return seen, handoff.handoffs

    seen, handoffs = asyncio.run(scenario())
    assert handoffs == 20
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


def test_a_slice_not_yet_over_goes_on_without_a_handoff() -> None:
    clock = _Clock()

    async def scenario() -> int:
        handoff = LoopHandoff(asyncio.get_running_loop(), slice_s=0.001, clock=clock)
        await asyncio.to_thread(lambda: [handoff() for _ in range(100)])
        before = handoff.handoffs
        clock.now += 0.001
        await asyncio.to_thread(handoff)
        return before * 10 + handoff.handoffs

    assert asyncio.run(scenario()) == 1  # none in the slice, one once it is over


def test_the_work_goes_on_alone_once_the_loop_is_closed() -> None:
    """At shutdown the loop may close while a cancelled refresh's thread still runs."""
    loop = asyncio.new_event_loop()
    handoff = LoopHandoff(loop, slice_s=0.0)
    loop.close()
    handoff()
    handoff()
    assert handoff.handoffs == 0


def test_a_loop_that_no_longer_runs_holds_the_work_only_for_the_handoff_timeout() -> None:
    loop = asyncio.new_event_loop()
    try:
        handoff = LoopHandoff(loop, slice_s=0.0)
        done = threading.Event()
        worker = threading.Thread(target=lambda: (handoff(), done.set()))
        worker.start()
        assert done.wait(5)  # HANDOFF_TIMEOUT_S is 0.1 s; the loop never ran the turns
        worker.join()
    finally:
        loop.close()


def test_run_gives_the_work_a_handoff_to_the_loop_it_was_awaited_on() -> None:
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()

        def work(pace: Callable[[], None]) -> bool:
            return isinstance(pace, LoopHandoff) and pace._loop is loop

        return await RefreshWork().run(work)

    assert asyncio.run(scenario())
