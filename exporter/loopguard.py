"""Keeping the event loop responsive while a refresh's CPU work runs in a worker thread.

The refresher builds and renders each snapshot in a worker thread (``asyncio.to_thread``),
which shares the GIL with the event loop. Measured at 5,000 products, three things made a
``/status`` answer wait behind that work:

* **The GIL switch interval.** A thread that wants the GIL waits for the holder to drop it,
  which a running thread does every ``sys.getswitchinterval()`` (5 ms by default): each time
  the loop had a request to answer during a refresh it could wait that long. While the
  refresh's work runs the interval is ``SWITCH_INTERVAL_S``; the thread then hands the GIL
  back within half a millisecond, at the cost of a few more hand-overs (each a few
  microseconds) while it runs. Outside the work the previous interval is restored.
* **Full passes of the cyclic garbage collector.** Each refresh allocates enough objects to
  trigger one every other refresh, and a full pass walks every long-lived object: the
  snapshot, the rendered pieces and the audit tally of every product (about 100k objects,
  25-50 ms with the GIL held, wherever it starts). While the work runs, automatic
  collection is off (a refresh that renders every product allocates hundreds of thousands
  of objects, and each collection on the way would walk all of them again); after it, the
  survivors are moved to the collector's permanent generation (``gc.freeze``), which
  collections skip, so they walk only what was allocated since. Frozen objects are still
  freed by their reference counts as usual (a snapshot replaced is released at once); what
  a frozen object cannot be is collected as part of a reference cycle. So that such cycles
  (rare: the snapshot and its pieces hold none) do not pile up, once every
  ``FULL_COLLECTION_INTERVAL_S`` everything is unfrozen and collected in one full pass, in
  the worker: one pause of that size an hour instead of one every couple of refreshes.
* **The GIL shared while the loop is busy.** Under load the loop wants the GIL all the
  time, so with the short interval alone the work and the loop hand it to each other at
  every system call the loop makes, and requests queue. The work therefore hands the GIL
  over itself: it calls a pace (``LoopHandoff``) between small steps (a product, a row),
  and once a slice of ``SLICE_S`` is over it asks the loop for ``LOOP_TURNS`` iterations and
  sleeps until they have run. What arrived during a slice is answered before the work
  goes on; an idle loop gives its turns back in microseconds.

Moving the work into a process of its own was the other way considered: it would also need
the audit tally and the rendered pieces (hundreds of megabytes at this scale) to cross the
process boundary or live there, with the snapshot sent back on every refresh
(``docs/design/scaling.md`` has the measurements).
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Concatenate, ParamSpec, TypeVar

SWITCH_INTERVAL_S = 0.0005
"""The GIL switch interval while a refresh's CPU work runs."""
SLICE_S = 0.001
"""How long the work runs before it hands the GIL to the event loop."""
LOOP_TURNS = 3
"""The loop iterations the work waits for at each handoff: data read, handler run, answer
written for what arrived during the slice."""
HANDOFF_TIMEOUT_S = 0.1
"""The longest the work waits for the loop's turns."""
FULL_COLLECTION_INTERVAL_S = 3600.0
"""How often the long-lived objects are handed back to the collector for one full pass."""

_P = ParamSpec("_P")
_T = TypeVar("_T")

_PROCESS_STATE = threading.Lock()
"""Held while a work changes the process-wide switch interval and collector. A refresh whose
awaiting task is cancelled leaves its worker thread running (``asyncio.to_thread`` cannot stop
it) and the refresher's lock released: a work started then waits here, instead of reading the
short interval and the disabled collector as the ones to restore."""


Pace = Callable[[], None]
"""Called by the work between small steps (a product, a row): it may hand the GIL over."""


def no_pace() -> None:
    """The pace of work run outside a refresh (tests, the first publish): none."""


def paced(items: Iterable[_T], pace: Pace) -> Iterator[_T]:
    """``items``, with ``pace`` called before each."""
    for item in items:
        pace()
        yield item


class LoopHandoff:
    """A pace that hands the GIL to the event loop between slices of the work.

    When a slice of ``slice_s`` is over, the worker asks the loop for ``loop_turns`` turns
    (a callback that schedules itself again) and blocks until the last one has run: the loop
    then answers what arrived during the slice without the worker competing for the GIL.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        slice_s: float = SLICE_S,
        loop_turns: int = LOOP_TURNS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._loop = loop
        self._slice_s = slice_s
        self._loop_turns = loop_turns
        self._clock = clock
        self._resume = threading.Event()
        self._slice_end = clock() + slice_s
        self.handoffs = 0
        """How often the work has waited for the loop's turns."""

    def __call__(self) -> None:
        if self._clock() < self._slice_end:
            return
        self._resume.clear()
        try:
            self._loop.call_soon_threadsafe(self._turn, self._loop_turns)
        except RuntimeError:
            # the loop is closed (the service is stopping): nothing is left to answer
            self._slice_end = math.inf
            return
        # bounded, so that a loop which stopped running cannot hold the work for good
        self._resume.wait(HANDOFF_TIMEOUT_S)
        self.handoffs += 1
        self._slice_end = self._clock() + self._slice_s

    def _turn(self, remaining: int) -> None:
        if remaining > 1:
            self._loop.call_soon(self._turn, remaining - 1)
        else:
            self._resume.set()


class RefreshWork:
    """Runs the refresh's CPU work in a worker thread that hands the GIL to the event loop
    between its slices, and settles what it leaves behind.

    One owner (the refresher, under its lock) awaits ``run`` on the loop; works that overlap
    anyway (any owner, any thread) take turns.
    """

    def __init__(
        self,
        *,
        full_collection_interval_s: float = FULL_COLLECTION_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._full_collection_interval_s = full_collection_interval_s
        self._clock = clock
        self._last_full_collection = clock()

    async def run(
        self, work: Callable[Concatenate[Pace, _P], _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``work(pace, *args, **kwargs)`` in a worker thread, handing the GIL to this event
        loop between its slices (``LoopHandoff``)."""
        pace = LoopHandoff(asyncio.get_running_loop())
        return await asyncio.to_thread(lambda: self.run_here(work, pace, *args, **kwargs))

    def run_here(
        self,
        work: Callable[Concatenate[Pace, _P], _T],
        pace: Pace,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """``work(pace, *args, **kwargs)`` in this thread with the short switch interval and
        no automatic collection, then ``settle``."""
        with _PROCESS_STATE:
            previous = sys.getswitchinterval()
            collecting = gc.isenabled()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            gc.disable()
            try:
                return work(pace, *args, **kwargs)
            finally:
                sys.setswitchinterval(previous)
                try:
                    self.settle()
                finally:
                    if collecting:
                        gc.enable()

    def settle(self) -> None:
        """Freeze what is alive now; first, when it is due, collect everything once."""
        now = self._clock()
        if now - self._last_full_collection >= self._full_collection_interval_s:
            self._last_full_collection = now
            gc.unfreeze()
            gc.collect()
        gc.freeze()
