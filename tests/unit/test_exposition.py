"""The incremental exposition and JSON bodies against a render from nothing.

The reference renders every family through prometheus-client's own collectors and
exposition functions, the way the service rendered before it kept per-product pieces; the
renderers under test must produce the very same bytes after any sequence of refreshes.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.audit import AuditRow, AuditTally
from exporter.catalogue import (
    FAMILIES,
    FLEET_FAMILIES,
    ExpositionInput,
    Family,
    FleetFamily,
    FleetHistogram,
    SelfFamily,
)
from exporter.domain import (
    DOCUMENTED_ACTIONS,
    ENGINE_STATES,
    ActionCategories,
    BootHistogram,
    EngineGroup,
    EventCategory,
    FleetSnapshot,
    Product,
    ProductCensus,
    ProductFleet,
    engine_census,
)
from exporter.exposition import GZIP_SEGMENT_PRODUCTS, ExpositionRenderer, RenderedExposition
from exporter.queries import EngineCount
from exporter.refresh_stats import RefreshStats
from exporter.refresher import build_snapshot
from exporter.views import ViewsRenderer, metrics_view, status_view

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BOUNDS_S = (1.0, 2.5, 60.0)
CATEGORIES = ActionCategories(("provision",), ("destroy",), ("health_failed",), ("restart",))


def _reference_metric(family: Family, data: ExpositionInput) -> Metric:
    documentation = family.documentation(data.refresh_interval_s)
    labels = list(family.labels)
    fleets = (
        sorted(data.snapshot.fleets.values(), key=lambda f: f.product.slug)
        if data.snapshot is not None
        else []
    )
    context = data.fleet_context
    if isinstance(family, FleetHistogram):
        histograms = HistogramMetricFamily(family.name, documentation, labels=labels)
        for fleet in fleets:
            for label_values, histogram in family.histograms(fleet, context):
                buckets = [
                    (floatToGoString(bound), float(count))  # type: ignore[no-untyped-call]
                    for bound, count in zip(
                        histogram.upper_bounds_s, histogram.cumulative_counts, strict=False
                    )
                ]
                buckets.append(("+Inf", float(histogram.count)))
                histograms.add_metric(list(label_values), buckets, histogram.sum_s)
        return histograms
    metric: GaugeMetricFamily | CounterMetricFamily
    if family.kind == "counter":
        metric = CounterMetricFamily(family.name, documentation, labels=labels)
    else:
        metric = GaugeMetricFamily(family.name, documentation, labels=labels)
    if isinstance(family, FleetFamily):
        samples = [s for fleet in fleets for s in family.samples(fleet, context)]
    else:
        samples = list(family.samples(data))
    for label_values, value in samples:
        metric.add_metric(list(label_values), float(value))
    return metric


class _ReferenceCollector(Collector):
    def __init__(self, data: ExpositionInput, *, include_fleet: bool) -> None:
        self._data = data
        self._include_fleet = include_fleet

    def collect(self) -> Iterator[Metric]:
        for family in FAMILIES:
            if not isinstance(family, SelfFamily) and not self._include_fleet:
                continue
            yield _reference_metric(family, self._data)


def _reference(data: ExpositionInput, *, include_fleet: bool) -> tuple[bytes, bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReferenceCollector(data, include_fleet=include_fleet))
    openmetrics = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), openmetrics


def _assert_same_as_reference(rendered: RenderedExposition, data: ExpositionInput) -> None:
    text, openmetrics = _reference(data, include_fleet=data.snapshot is not None)
    text_self, openmetrics_self = _reference(data, include_fleet=False)
    for body, expected in (
        (rendered.text, text),
        (rendered.openmetrics, openmetrics),
        (rendered.text_self_only, text_self),
        (rendered.openmetrics_self_only, openmetrics_self),
    ):
        assert body.plain == expected
        assert gzip.decompress(body.gzipped) == expected
        # one gzip member whose stream ends exactly at the trailer
        member = zlib.decompressobj(wbits=31)
        assert member.decompress(body.gzipped) == expected
        assert member.eof
        assert member.unused_data == b""


_label_text = st.text(alphabet=st.sampled_from('ab-_0"\\\né'), min_size=1, max_size=6)
_counts = st.integers(min_value=0, max_value=10**12)


@st.composite
def _histograms(draw: st.DrawFn) -> BootHistogram:
    steps = draw(st.lists(st.integers(0, 50), min_size=len(BOUNDS_S) + 1, max_size=4))
    cumulative = tuple(sum(steps[: i + 1]) for i in range(len(steps)))
    return BootHistogram(
        BOUNDS_S,
        cumulative,
        draw(st.floats(min_value=0, max_value=1e7, allow_nan=False)),
        cumulative[-1],
    )


@st.composite
def _fleet_variants(draw: st.DrawFn, product_id: str) -> ProductFleet:
    statuses = st.sampled_from((*ENGINE_STATES, "hibernating", "weird\nstate"))
    actions = st.sampled_from((*DOCUMENTED_ACTIONS, "restart", "custom_action"))
    return ProductFleet(
        product=Product(
            product_id,
            draw(_label_text),
            "Display name",
            draw(st.text("0123456789abcdef")),
            draw(st.none() | st.integers(1, 10**6)),
        ),
        engines_by_status=MappingProxyType(draw(st.dictionaries(statuses, _counts))),
        oldest_provisioning_age_s=draw(st.floats(min_value=0, max_value=1e9, allow_nan=False)),
        lifetime_by_action=MappingProxyType(draw(st.dictionaries(actions, _counts))),
        last_hour=MappingProxyType(draw(st.dictionaries(st.sampled_from(EventCategory), _counts))),
        avg_boot_ms=draw(st.none() | st.integers(0, 10**6)),
        boot_histogram=draw(_histograms()),
        census=ProductCensus(
            draw(_counts),
            draw(st.floats(min_value=0, max_value=1e9, allow_nan=False)),
            MappingProxyType(draw(st.dictionaries(_label_text, _counts, max_size=3))),
        ),
    )


@dataclass(frozen=True)
class _Refresh:
    segment_products: int
    fleets: tuple[ProductFleet, ...] | None
    """``None``: no snapshot yet."""
    critical_failed_ratio: float
    refresh_interval_s: float
    last_duration_s: float


@st.composite
def _refresh_sequences(draw: st.DrawFn) -> list[_Refresh]:
    """Refreshes over a few products, each product taking one of a few figure sets in each
    refresh (or being absent), so that most refreshes repeat some products' figures."""
    product_count = draw(st.integers(0, 9))
    segment_products = draw(st.integers(1, 4))
    variants = [
        draw(st.lists(_fleet_variants(f"p{n}"), min_size=1, max_size=3))
        for n in range(product_count)
    ]
    ratios = draw(st.lists(st.sampled_from((0.1, 0.5, 1.0)), min_size=1, max_size=2))
    intervals = draw(st.lists(st.sampled_from((15.0, 2.5)), min_size=1, max_size=2))
    refreshes = []
    for _ in range(draw(st.integers(1, 6))):
        present = draw(st.booleans() | st.just(True))
        fleets = tuple(
            choices[draw(st.integers(0, len(choices) - 1))]
            for choices in variants
            if draw(st.integers(0, 5)) > 0
        )
        refreshes.append(
            _Refresh(
                segment_products,
                fleets if present else None,
                draw(st.sampled_from(ratios)),
                draw(st.sampled_from(intervals)),
                draw(st.floats(min_value=0, max_value=100, allow_nan=False)),
            )
        )
    return refreshes


def _input(refresh: _Refresh) -> ExpositionInput:
    snapshot = None
    if refresh.fleets is not None:
        snapshot = FleetSnapshot(
            NOW,
            MappingProxyType({f.product.product_id: f for f in refresh.fleets}),
            audit_counted=True,
        )
    return ExpositionInput(
        snapshot=snapshot,
        stats=RefreshStats(
            refresh.last_duration_s,
            1.7e9,
            MappingProxyType({"audit": 2}),
            True,
            audit_progress=1.0,
            replication_lag_s=0.0,
        ),
        critical_failed_ratio=refresh.critical_failed_ratio,
        refresh_interval_s=refresh.refresh_interval_s,
        version="1.2.3",
    )


@settings(max_examples=100, deadline=None)
@given(_refresh_sequences())
def test_incremental_exposition_is_byte_identical_to_a_full_render(
    refreshes: Sequence[_Refresh],
) -> None:
    renderer = ExpositionRenderer(refreshes[0].segment_products)
    for refresh in refreshes:
        data = _input(refresh)
        _assert_same_as_reference(renderer.render(data), data)


@settings(max_examples=50, deadline=None)
@given(_refresh_sequences())
def test_incremental_json_bodies_equal_bodies_rendered_from_the_fleet(
    refreshes: Sequence[_Refresh],
) -> None:
    renderer = ViewsRenderer(0.1, CATEGORIES)
    for refresh in refreshes:
        if refresh.fleets is None:
            continue
        fleets = {f.product.product_id: f for f in refresh.fleets}
        views = renderer.render(FleetSnapshot(NOW, MappingProxyType(fleets)))
        assert set(views.status) == set(views.metrics) == set(fleets)
        for product_id, fleet in fleets.items():
            assert views.status[product_id] == _json(status_view(fleet, 0.1))
            assert views.metrics[product_id] == _json(metrics_view(fleet, CATEGORIES))


def _json(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


def _fleets(count: int) -> list[ProductFleet]:
    histogram = BootHistogram(BOUNDS_S, (1, 2, 3, 4), 9.5, 4)
    return [
        ProductFleet(
            product=Product(f"id-{n}", f"product-{n:04d}", f"Product {n}", f"{n:064x}"),
            engines_by_status=MappingProxyType({"running": n, "failed": n % 3}),
            oldest_provisioning_age_s=0.0,
            lifetime_by_action=MappingProxyType({"provision": 10 * n}),
            last_hour=MappingProxyType({EventCategory.PROVISION: n % 5}),
            avg_boot_ms=4000,
            boot_histogram=histogram,
        )
        for n in range(count)
    ]


def _snapshot_input(fleets: Sequence[ProductFleet]) -> ExpositionInput:
    return _input(_Refresh(GZIP_SEGMENT_PRODUCTS, tuple(fleets), 0.1, 15.0, 0.2))


def _renderers_after(fleets: Sequence[ProductFleet]) -> tuple[ExpositionRenderer, ViewsRenderer]:
    """An exposition and a views renderer that have rendered ``fleets`` once."""
    renderer = ExpositionRenderer()
    views = ViewsRenderer(0.1, CATEGORIES)
    renderer.render(_snapshot_input(fleets))
    views.render(FleetSnapshot(NOW, MappingProxyType({f.product.product_id: f for f in fleets})))
    return renderer, views


def test_only_products_whose_figures_changed_are_rendered_again() -> None:
    fleets = _fleets(100)
    renderer, views = _renderers_after(fleets)
    assert renderer.last_rendered == views.last_rendered == 100

    # equal figures in new objects, as the next refresh builds them, are not rendered again
    fleets = [replace(f) for f in fleets]
    fleets[7] = replace(fleets[7], engines_by_status=MappingProxyType({"running": 1}))
    fleets[42] = replace(fleets[42], avg_boot_ms=1)
    data = _snapshot_input(fleets)
    assert data.snapshot is not None
    _assert_same_as_reference(renderer.render(data), data)
    views.render(data.snapshot)
    # the average boot time is a JSON figure only: no exposition line reads it
    assert (renderer.last_rendered, views.last_rendered) == (1, 2)


def test_a_changed_context_renders_every_product_again() -> None:
    fleets = _fleets(10)
    renderer = ExpositionRenderer()
    renderer.render(_snapshot_input(fleets))
    data = replace(_snapshot_input(fleets), critical_failed_ratio=0.5)
    _assert_same_as_reference(renderer.render(data), data)
    assert renderer.last_rendered == 10


def test_a_renamed_product_renders_every_family_again() -> None:
    fleets = _fleets(10)
    renderer = ExpositionRenderer()
    renderer.render(_snapshot_input(fleets))
    renamed = replace(fleets[4].product, slug="renamed")
    fleets[4] = replace(fleets[4], product=renamed)
    data = _snapshot_input(fleets)
    _assert_same_as_reference(renderer.render(data), data)
    assert renderer.last_rendered == 1
    assert renderer.last_rendered_families == len(FLEET_FAMILIES)


def test_gzip_segments_of_unchanged_products_are_not_compressed_again() -> None:
    fleets = _fleets(10 * GZIP_SEGMENT_PRODUCTS)
    renderer = ExpositionRenderer()
    first = renderer.render(_snapshot_input(fleets))
    # both formats share the products' segments: one copy of the lines is compressed
    assert len(first.text.plain) <= renderer.last_compressed_bytes < 1.1 * len(first.text.plain)
    fleets[3] = replace(fleets[3], avg_boot_ms=1, lifetime_by_action=MappingProxyType({}))
    second = renderer.render(_snapshot_input(fleets))
    # one run of products per fleet family, the headers and the self-metrics
    assert 0 < renderer.last_compressed_bytes < len(second.text.plain) / 5
    assert gzip.decompress(second.openmetrics.gzipped) == second.openmetrics.plain


_POOL = tuple(f"p{n}" for n in range(5))
_STATUSES = ("provisioning", "running", "failed", "hibernating")
_ACTIONS = ("provision", "health_failed", "restart", "destroy", "custom_action")
_STEPS_S = (0.0, 1.0, 59.0, 600.0, 3599.0, 3600.0, 3601.0, 7200.0)


@dataclass(frozen=True)
class _Step:
    """One refresh as the refresher sees it: the database's rows at ``now``."""

    now: datetime
    products: tuple[Product, ...]
    engine_counts: tuple[EngineCount, ...]
    audit_rows: tuple[AuditRow, ...]
    census_groups: tuple[EngineGroup, ...] | None
    """A census taken at this refresh, or None to carry the last one."""


@st.composite
def _steps(draw: st.DrawFn) -> list[_Step]:
    """Refreshes over a few products in which most figures repeat: products come and go or
    change their quota, engine counts move for some, audit rows arrive (some stamped in the
    future or older than the window), time jumps across window edges, censuses come."""
    now = NOW
    steps = []
    next_id = 1
    for index in range(draw(st.integers(1, 8))):
        now += timedelta(seconds=draw(st.sampled_from(_STEPS_S)))
        present = sorted(draw(st.sets(st.sampled_from(_POOL), min_size=0, max_size=5)))
        products = tuple(
            Product(pid, f"slug-{pid}", pid.upper(), f"{pid}-key", draw(st.sampled_from((None, 5))))
            for pid in present
        )
        counts = []
        for pid in present:
            for status in draw(st.sets(st.sampled_from(_STATUSES), max_size=2)):
                created = now - timedelta(seconds=draw(st.sampled_from((0, 30, 5000))))
                oldest = created if status == "provisioning" else None
                counts.append(EngineCount(pid, status, draw(st.integers(1, 3)), oldest))
        rows = []
        for _ in range(draw(st.integers(0, 4))):
            offset_s = draw(st.sampled_from((-4000, -3600, -1800, -1, 0, 30)))
            rows.append(
                AuditRow(
                    next_id,
                    draw(st.sampled_from((*_POOL, None))),
                    draw(st.sampled_from(_ACTIONS)),
                    now + timedelta(seconds=offset_s),
                    draw(st.none() | st.integers(0, 70_000)),
                )
            )
            next_id += 1
        census = None
        if index == 0 or draw(st.integers(0, 3)) == 0:
            census = tuple(
                EngineGroup(
                    c.product_id,
                    c.status,
                    draw(st.sampled_from(("1.0", "2.0"))),
                    c.engines,
                    c.oldest_provisioning_at or now,
                    draw(st.integers(0, c.engines)),
                    now - timedelta(seconds=draw(st.sampled_from((10, 100)))),
                )
                for c in counts
            )
        steps.append(_Step(now, products, tuple(counts), tuple(rows), census))
    return steps


def _tally() -> AuditTally:
    return AuditTally(CATEGORIES, BOUNDS_S, 3)


@settings(max_examples=150, deadline=None)
@given(_steps())
def test_a_refresh_that_reuses_unchanged_products_publishes_what_a_full_build_does(
    steps: Sequence[_Step],
) -> None:
    """The refresher's path (one tally handing out unchanged figures again, fleets kept by
    identity, both renderers keeping their pieces) against a tally replayed from nothing, a
    snapshot built without a previous one and a full render, at every refresh."""
    tally = _tally()
    exposition = ExpositionRenderer(2)
    views = ViewsRenderer(0.1, CATEGORIES)
    previous = None
    census = None
    history: list[tuple[AuditRow, datetime]] = []
    for step in steps:
        for row in step.audit_rows:
            tally.add_row(row, step.now)
            history.append((row, step.now))
        tally.prune(step.now)
        product_ids = [p.product_id for p in step.products]
        if step.census_groups is not None:
            census = engine_census(step.census_groups, product_ids, step.now, 1)
        counts = list(step.engine_counts)
        snapshot = build_snapshot(
            step.now, list(step.products), counts, tally, census, previous, audit_counted=True
        )
        replayed = _tally()
        for row, added_at in history:
            replayed.add_row(row, added_at)
        expected = build_snapshot(
            step.now, list(step.products), counts, replayed, census, None, audit_counted=True
        )
        assert snapshot == expected
        data = replace(_snapshot_input(()), snapshot=snapshot)
        _assert_same_as_reference(exposition.render(data), replace(data, snapshot=expected))
        rendered = views.render(snapshot)
        for product_id, fleet in expected.fleets.items():
            assert rendered.status[product_id] == _json(status_view(fleet, 0.1))
            assert rendered.metrics[product_id] == _json(metrics_view(fleet, CATEGORIES))
        previous = snapshot


def test_an_unchanged_product_keeps_its_fleet_object_and_costs_no_render() -> None:
    tally = _tally()
    products = [Product(pid, f"slug-{pid}", pid, f"{pid}-key") for pid in _POOL]
    counts = [EngineCount(pid, "running", 2, None) for pid in _POOL]
    census = engine_census([], _POOL, NOW, 1)
    exposition = ExpositionRenderer()
    first = build_snapshot(NOW, products, counts, tally, census, None, audit_counted=True)
    exposition.render(replace(_snapshot_input(()), snapshot=first))

    tally.add_row(AuditRow(1, "p3", "provision", NOW, 1500), NOW)
    later = NOW + timedelta(seconds=15)
    # the next refresh fetches new, equal rows
    products = [replace(p) for p in products]
    counts = [c._replace() for c in counts]
    second = build_snapshot(later, products, counts, tally, census, first, audit_counted=True)
    exposition.render(replace(_snapshot_input(()), snapshot=second))

    kept = [pid for pid in _POOL if second.fleets[pid] is first.fleets[pid]]
    assert kept == ["p0", "p1", "p2", "p4"]
    assert second.fleets["p3"].lifetime_by_action == {"provision": 1}
    assert exposition.last_rendered == 1


def test_a_product_whose_audit_row_leaves_the_hour_is_rebuilt_then() -> None:
    tally = _tally()
    tally.add_row(AuditRow(1, "p0", "health_failed", NOW, None), NOW)
    products = [Product("p0", "slug-p0", "P0", "p0-key")]
    first = build_snapshot(NOW, products, [], tally, None, None, audit_counted=True)
    almost = NOW + timedelta(minutes=59, seconds=59)
    kept = build_snapshot(almost, products, [], tally, None, first, audit_counted=True)
    gone = build_snapshot(
        NOW + timedelta(hours=1), products, [], tally, None, kept, audit_counted=True
    )
    assert kept.fleets["p0"] is first.fleets["p0"]
    assert first.fleets["p0"].last_hour[EventCategory.CRASH] == 1
    assert gone.fleets["p0"].last_hour[EventCategory.CRASH] == 0


def test_a_new_census_renders_only_the_census_families_and_no_json_body_again() -> None:
    fleets = _fleets(10)
    renderer, views = _renderers_after(fleets)
    aged = [
        replace(f, census=ProductCensus(0, 30.0 + n, MappingProxyType({"other": 0})))
        for n, f in enumerate(fleets)
    ]
    data = _snapshot_input(aged)
    assert data.snapshot is not None
    _assert_same_as_reference(renderer.render(data), data)
    views.render(data.snapshot)
    assert renderer.last_rendered == 10
    assert renderer.last_rendered_families == 10
    assert views.last_rendered == 0


class _CountingPace:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_building_and_rendering_pace_themselves_at_every_product() -> None:
    """The refresh's work hands the GIL to the event loop only where it calls its pace
    (``exporter.loopguard``): every product's step in each stage is such a place, so no
    stretch of the work grows with the number of products."""
    tally = _tally()
    products = [Product(pid, f"slug-{pid}", pid, f"{pid}-key") for pid in _POOL]
    counts = [EngineCount(pid, "running", 2, None) for pid in _POOL]
    census = engine_census([], _POOL, NOW, 1)
    stages = {
        "build": _CountingPace(),
        "views": _CountingPace(),
        "exposition": _CountingPace(),
    }
    snapshot = build_snapshot(
        NOW, products, counts, tally, census, None, audit_counted=True, pace=stages["build"]
    )
    ViewsRenderer(0.1, CATEGORIES).render(snapshot, stages["views"])
    ExpositionRenderer().render(
        replace(_snapshot_input(()), snapshot=snapshot), stages["exposition"]
    )
    assert {stage: pace.calls >= len(_POOL) for stage, pace in stages.items()} == dict.fromkeys(
        stages, True
    )
