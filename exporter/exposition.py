"""Prometheus exposition, rendered once per refresh.

``render`` turns an ``ExpositionInput`` into every body a scrape may ask for — text 0.0.4
and OpenMetrics 1.0, each plain and gzipped, each with and without the fleet data — so a
scrape only picks bytes that already exist. A pure function of its input.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass

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

from exporter.catalogue import FAMILIES, ExpositionInput, Family

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Body:
    plain: bytes
    gzipped: bytes

    @classmethod
    def of(cls, payload: bytes) -> Body:
        return cls(payload, gzip.compress(payload, compresslevel=6, mtime=0))


@dataclass(frozen=True, slots=True)
class RenderedExposition:
    """Every scrape answer for one refresh attempt."""

    text: Body
    openmetrics: Body
    text_self_only: Body
    openmetrics_self_only: Body

    def body(self, *, openmetrics: bool, include_fleet: bool) -> Body:
        if openmetrics:
            return self.openmetrics if include_fleet else self.openmetrics_self_only
        return self.text if include_fleet else self.text_self_only


def _to_metric(family: Family, data: ExpositionInput) -> Metric:
    documentation = family.help.format(interval=f"{data.refresh_interval_s:g}")
    labels = list(family.labels)
    if family.kind == "histogram":
        assert family.histograms is not None
        histogram_family = HistogramMetricFamily(family.name, documentation, labels=labels)
        for label_values, histogram in family.histograms(data):
            buckets = [
                (floatToGoString(bound), float(count))  # type: ignore[no-untyped-call]
                for bound, count in zip(
                    histogram.upper_bounds_s, histogram.cumulative_counts, strict=False
                )
            ]
            buckets.append(("+Inf", float(histogram.count)))
            histogram_family.add_metric(list(label_values), buckets, histogram.sum_s)
        return histogram_family
    assert family.samples is not None
    metric_family: GaugeMetricFamily | CounterMetricFamily
    if family.kind == "counter":
        metric_family = CounterMetricFamily(family.name, documentation, labels=labels)
    else:
        metric_family = GaugeMetricFamily(family.name, documentation, labels=labels)
    for label_values, value in family.samples(data):
        metric_family.add_metric(list(label_values), float(value))
    return metric_family


class _CatalogueCollector(Collector):
    def __init__(self, data: ExpositionInput, *, include_fleet: bool) -> None:
        self._data = data
        self._include_fleet = include_fleet

    def collect(self) -> Iterator[Metric]:
        for family in FAMILIES:
            if family.fleet_data and not self._include_fleet:
                continue
            yield _to_metric(family, self._data)


def _render(data: ExpositionInput, *, include_fleet: bool) -> tuple[Body, Body]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_CatalogueCollector(data, include_fleet=include_fleet))
    openmetrics = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return Body.of(generate_latest(registry)), Body.of(openmetrics)


def render(data: ExpositionInput) -> RenderedExposition:
    text, openmetrics = _render(data, include_fleet=data.snapshot is not None)
    text_self, openmetrics_self = _render(data, include_fleet=False)
    return RenderedExposition(text, openmetrics, text_self, openmetrics_self)
