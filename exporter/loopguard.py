"""Keeping the event loop responsive while a refresh's CPU work runs in a worker thread.

The refresher builds and renders each snapshot in a worker thread (``asyncio.to_thread``),
which shares the GIL with the event loop. Measured in-process at 5,000 products, two things
made a ``/status`` answer wait behind that work:

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

Moving the work into a process of its own was the other way considered: it would also need
the audit tally and the rendered pieces (hundreds of megabytes at this scale) to cross the
process boundary or live there, with the snapshot sent back on every refresh. With the two
measures above no long stall is left (loop lag p99 about 2 ms at 5,000 products); under a
load that keeps the loop busy all the time it still shares the GIL with the work while the
work runs (``docs/design/scaling.md`` has the measurements).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

SWITCH_INTERVAL_S = 0.0005
"""The GIL switch interval while a refresh's CPU work runs."""
FULL_COLLECTION_INTERVAL_S = 3600.0
"""How often the long-lived objects are handed back to the collector for one full pass."""

_P = ParamSpec("_P")
_T = TypeVar("_T")

_PROCESS_STATE = threading.Lock()
"""Held while a work changes the process-wide switch interval and collector. A refresh whose
awaiting task is cancelled leaves its worker thread running (``asyncio.to_thread`` cannot stop
it) and the refresher's lock released: a work started then waits here, instead of reading the
short interval and the disabled collector as the ones to restore."""


class RefreshWork:
    """Runs the refresh's CPU work in short GIL slices and settles what it leaves behind.

    One owner (the refresher, under its lock) calls ``run`` from its worker thread; runs that
    overlap anyway (any owner, any thread) take turns.
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

    def run(self, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``work(*args, **kwargs)`` with the short switch interval and no automatic
        collection, then ``settle``."""
        with _PROCESS_STATE:
            previous = sys.getswitchinterval()
            collecting = gc.isenabled()
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            gc.disable()
            try:
                return work(*args, **kwargs)
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
