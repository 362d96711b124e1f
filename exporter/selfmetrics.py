"""Self-observability that moves with every request: HTTP request counts and durations per
route, and prometheus-client's standard ``process_*`` and ``python_*`` collectors.

These cannot be rendered once per refresh like the fleet exposition. ``LiveMetrics`` renders
them (a few dozen lines) when a scrape asks, at most once per ``max_age_s``, and the scrape
handler appends them to the pre-rendered body. ``handler`` is a route name from ``HANDLERS``,
never a raw path, so its values stay bounded whatever clients send.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.routes import ROUTE_PATHS

if TYPE_CHECKING:
    from exporter.exposition import Body

HANDLERS = (*ROUTE_PATHS, "prometheus", "other")
"""Route names (``exporter.routes``) and the scrape endpoint; ``other``: unknown paths, wrong
methods and requests refused before routing."""

DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LIVE_MAX_AGE_S = 1.0
"""A scrape's self-metrics are at most this old: Prometheus scrapes every 15 s, so each real
scrape gets fresh figures, while a flood of scrapes does not read /proc for each one."""

_OPENMETRICS_EOF = b"# EOF\n"


@dataclass(frozen=True, slots=True)
class LiveFamily:
    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


LIVE_FAMILIES = (
    LiveFamily(
        "engine_fleet_exporter_http_requests_total",
        "counter",
        ("handler", "code"),
        "HTTP requests answered, by route name and status code.",
    ),
    LiveFamily(
        "engine_fleet_exporter_http_request_duration_seconds",
        "histogram",
        ("handler",),
        "Time from routing a request to its answer, by route name.",
    ),
    LiveFamily("process_virtual_memory_bytes", "gauge", (), "Virtual memory size in bytes."),
    LiveFamily("process_resident_memory_bytes", "gauge", (), "Resident memory size in bytes."),
    LiveFamily(
        "process_start_time_seconds",
        "gauge",
        (),
        "Start time of the process since unix epoch in seconds.",
    ),
    LiveFamily(
        "process_cpu_seconds_total",
        "counter",
        (),
        "Total user and system CPU time spent in seconds.",
    ),
    LiveFamily("process_open_fds", "gauge", (), "Number of open file descriptors."),
    LiveFamily("process_max_fds", "gauge", (), "Maximum number of open file descriptors."),
    LiveFamily(
        "python_info",
        "gauge",
        ("implementation", "major", "minor", "patchlevel", "version"),
        "Python platform information",
    ),
    LiveFamily(
        "python_gc_objects_collected_total",
        "counter",
        ("generation",),
        "Objects collected during gc",
    ),
    LiveFamily(
        "python_gc_objects_uncollectable_total",
        "counter",
        ("generation",),
        "Uncollectable objects found during GC",
    ),
    LiveFamily(
        "python_gc_collections_total",
        "counter",
        ("generation",),
        "Number of times this generation was collected",
    ),
)
# The library's standard collectors, registered with each app's own registry rather than
# the library's global default one.
_STANDARD_COLLECTORS = (ProcessCollector, PlatformCollector, GCCollector)


class RouteStats:
    """One route's answers: how many per status code, and their durations as a histogram.

    Plain counts, kept by the event loop that answers the requests (one thread, so no lock)
    and turned into metric families only when a scrape renders them: counting an answer is
    a few dictionary and list operations, not a prometheus-client child lookup per request.
    """

    __slots__ = ("_bounds_s", "codes", "in_bucket", "seconds_sum")

    def __init__(self, bounds_s: tuple[float, ...]) -> None:
        self._bounds_s = bounds_s
        self.codes: dict[int, int] = {}
        self.in_bucket = [0] * (len(bounds_s) + 1)
        """A count per bucket (not cumulative), the last one +Inf."""
        self.seconds_sum = 0.0

    def observe(self, status: int, seconds: float) -> None:
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        self.in_bucket[bisect.bisect_left(self._bounds_s, seconds)] += 1
        self.seconds_sum += seconds


class HttpStats(Collector):
    """Requests per (handler, code) and their durations per handler, one ``RouteStats`` per
    route name; only routes that have answered are exported."""

    def __init__(self, buckets_s: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self._buckets_s = buckets_s
        self._routes = {handler: RouteStats(buckets_s) for handler in HANDLERS}

    def observer(self, handler: str) -> Callable[[int, float], None]:
        """``observe`` of one route name, for the route's wrapper: one call per answer."""
        assert handler in HANDLERS, handler
        return self._routes[handler].observe

    def collect(self) -> Iterator[Metric]:
        requests, durations = LIVE_FAMILIES[0], LIVE_FAMILIES[1]
        counter = CounterMetricFamily(
            requests.name.removesuffix("_total"), requests.help, labels=list(requests.labels)
        )
        histogram = HistogramMetricFamily(
            durations.name, durations.help, labels=list(durations.labels)
        )
        bounds = [floatToGoString(bound) for bound in (*self._buckets_s, float("inf"))]  # type: ignore[no-untyped-call]
        for handler, route in sorted(self._routes.items()):
            if not route.codes:
                continue
            for status, count in sorted(route.codes.items()):
                counter.add_metric([handler, str(status)], count)
            cumulative = list(itertools.accumulate(route.in_bucket))
            histogram.add_metric(
                [handler], list(zip(bounds, cumulative, strict=True)), route.seconds_sum
            )
        yield counter
        yield histogram


class LiveMetrics:
    """The per-request self-metrics of one app, rendered for a scrape (see module doc)."""

    def __init__(
        self, *, max_age_s: float = LIVE_MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.http = HttpStats()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self.http)
        for collector in _STANDARD_COLLECTORS:
            collector(registry=self._registry)
        self._max_age_s = max_age_s
        self._clock = clock
        self._rendered: dict[bool, tuple[float, bytes]] = {}
        self._answers: dict[tuple[bool, bool], tuple[Body, bytes, bytes]] = {}

    def answer(self, body: Body, *, openmetrics: bool, gzipped: bool) -> bytes:
        """``body`` with the live families appended (gzipped if asked). While neither the
        pre-rendered body nor the live part has changed, the same bytes are handed out
        again: a flood of scrapes costs no copy and no compression."""
        tail = self.render(openmetrics=openmetrics)
        key = (openmetrics, gzipped)
        last = self._answers.get(key)
        if last is not None and last[0] is body and last[1] is tail:
            return last[2]
        answer = body.gzipped_with(tail) if gzipped else body.plain_with(tail)
        self._answers[key] = (body, tail, answer)
        return answer

    def render(self, *, openmetrics: bool) -> bytes:
        """The live families in one format (OpenMetrics without its ``# EOF``)."""
        now = self._clock()
        cached = self._rendered.get(openmetrics)
        if cached is not None and now - cached[0] < self._max_age_s:
            return cached[1]
        if openmetrics:
            body: bytes = generate_openmetrics(self._registry)  # type: ignore[no-untyped-call]
            body = body.removesuffix(_OPENMETRICS_EOF)
        else:
            body = generate_latest(self._registry)
        self._rendered[openmetrics] = (now, body)
        return body


def markdown_rows() -> list[str]:
    """The README metric table's rows for the live families."""
    return [
        f"| `{family.name}` | {family.kind} | {', '.join(family.labels) or '—'} | "
        f"{family.help.rstrip('.')}. Self-metric: always served, rendered per scrape. |"
        for family in LIVE_FAMILIES
    ]


_LIVE_SAMPLE_PREFIXES = tuple(
    family.name.removesuffix("_total").encode() for family in LIVE_FAMILIES
)


def without_live(exposition: bytes) -> bytes:
    """The exposition without the live families' sample lines, which move between two
    scrapes: what two scrapes of one snapshot have in common."""
    return b"".join(
        line
        for line in exposition.splitlines(keepends=True)
        if not line.startswith(_LIVE_SAMPLE_PREFIXES)
    )
