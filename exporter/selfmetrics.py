"""Self-observability that moves with every request: HTTP request counts and durations per
route, and prometheus-client's standard ``process_*`` and ``python_*`` collectors.

These cannot be rendered once per refresh like the fleet exposition. ``LiveMetrics`` renders
them (a few dozen lines) when a scrape asks, at most once per ``max_age_s``, and the scrape
handler appends them to the pre-rendered body. ``handler`` is a route name from ``HANDLERS``,
never a raw path, so its values stay bounded whatever clients send.
"""

from __future__ import annotations

import bisect
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


class HttpStats(Collector):
    """Requests per (handler, code) and their durations per handler, as plain counts."""

    def __init__(self, buckets_s: tuple[float, ...] = DURATION_BUCKETS_S) -> None:
        self._buckets_s = buckets_s
        self._requests: dict[tuple[str, int], int] = {}
        self._histograms: dict[str, list[float]] = {}
        """Per handler: a count per bucket (not cumulative) and +Inf, then the sum."""

    def observe(self, handler: str, status: int, seconds: float) -> None:
        key = (handler, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        histogram = self._histograms.get(handler)
        if histogram is None:
            histogram = self._histograms[handler] = [0.0] * (len(self._buckets_s) + 2)
        histogram[bisect.bisect_left(self._buckets_s, seconds)] += 1
        histogram[-1] += seconds

    def observer(self, handler: str) -> Callable[[int, float], None]:
        """``observe`` bound to one route name, for the route's wrapper."""
        assert handler in HANDLERS, handler

        def observe(status: int, seconds: float) -> None:
            self.observe(handler, status, seconds)

        return observe

    def collect(self) -> Iterator[Metric]:
        requests, durations = LIVE_FAMILIES[0], LIVE_FAMILIES[1]
        counter = CounterMetricFamily(
            requests.name.removesuffix("_total"), requests.help, labels=list(requests.labels)
        )
        for (handler, status), count in sorted(self._requests.items()):
            counter.add_metric([handler, str(status)], count)
        yield counter
        histogram = HistogramMetricFamily(
            durations.name, durations.help, labels=list(durations.labels)
        )
        for handler, counts in sorted(self._histograms.items()):
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip((*self._buckets_s, float("inf")), counts, strict=False):
                cumulative += in_bucket
                buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
            histogram.add_metric([handler], buckets, counts[-1])
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
