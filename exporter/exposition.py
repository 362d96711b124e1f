"""Prometheus exposition, rendered once per refresh, at a cost proportional to what changed.

``ExpositionRenderer.render`` turns an ``ExpositionInput`` into every body a scrape may ask
for — text 0.0.4 and OpenMetrics 1.0, each plain and gzipped, each with and without the fleet
data — so a scrape only appends the live self-metrics to bytes that already exist (each
body is kept open, before its closing line and gzip trailer, for that). Its answer is a pure
function of its input, byte for byte what prometheus-client renders for the catalogue's
families; what it remembers between calls only saves work:

* each product's sample lines per fleet family are kept with the ``ProductFleet`` they came
  from and rendered again only when the figures that family reads (``reads`` in the
  catalogue) or the ``FleetContext`` change; the lines are the same in both formats, so one
  copy serves both;
* the gzipped bodies are one gzip member whose deflate stream is the concatenation of
  independently compressed segments (a family's header, then runs of a few products'
  lines), each byte-aligned by a sync flush, so only the segments whose products
  changed are compressed again. The trailer's CRC-32 is taken over the whole body.

Self-metrics (a handful of lines that change every refresh) and the family headers go
through prometheus-client itself.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
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

from exporter.catalogue import (
    FAMILIES,
    FLEET_FAMILIES,
    SELF_FAMILIES,
    ExpositionInput,
    Family,
    FleetContext,
    FleetFamily,
    FleetHistogram,
    Labels,
    SelfFamily,
)
from exporter.domain import ProductFleet
from exporter.loopguard import Pace, no_pace

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

GZIP_LEVEL = 6
GZIP_SEGMENT_PRODUCTS = 16
"""Products per independently compressed segment by default: smaller segments mean less to compress
again when a few products change, larger ones a smaller body (16 costs about a fifth more
bytes than one stream over the whole body)."""

_OPENMETRICS_EOF = b"# EOF\n"
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
"""Magic, deflate, no flags, mtime 0, no extra flags, OS unknown: what ``gzip.compress``
writes with ``mtime=0``."""


@dataclass(frozen=True, slots=True)
class Body:
    """One body, kept open for the live families a scrape appends (``plain_with``,
    ``gzipped_with``): the closed forms are made on demand, never stored, so a published
    exposition holds each multi-megabyte body once."""

    open_plain: bytes
    """The body before its closing line (OpenMetrics' ``# EOF``; nothing in text format)."""
    open_gzipped: bytes
    """The gzip header and the sync-flushed deflate segments of ``open_plain``."""
    open_crc: int
    """CRC-32 of ``open_plain``, for a trailer over more bytes appended to it."""
    closing: bytes

    @property
    def plain(self) -> bytes:
        return self.plain_with(b"")

    @property
    def gzipped(self) -> bytes:
        return self.gzipped_with(b"")

    def plain_with(self, tail: bytes) -> bytes:
        """The body with ``tail`` before the closing line."""
        return b"".join((self.open_plain, tail, self.closing))

    def gzipped_with(self, tail: bytes) -> bytes:
        """``plain_with(tail)`` gzipped: only the tail is compressed and checksummed, after
        the stored segments and from their CRC."""
        end = tail + self.closing
        compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        deflated = compressor.compress(end) + compressor.flush(zlib.Z_FINISH)
        size = len(self.open_plain) + len(end)
        trailer = struct.pack("<II", zlib.crc32(end, self.open_crc), size & 0xFFFFFFFF)
        return b"".join((self.open_gzipped, deflated, trailer))


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


def _to_metric(family: SelfFamily, data: ExpositionInput) -> Metric:
    """A self-metric as a prometheus-client family, for prometheus-client to render."""
    metric_family = _sample_metric(family, data.refresh_interval_s)
    for label_values, value in family.samples(data):
        metric_family.add_metric(list(label_values), float(value))
    return metric_family


def _sample_metric(
    family: FleetFamily | SelfFamily, refresh_interval_s: float
) -> GaugeMetricFamily | CounterMetricFamily:
    documentation = family.documentation(refresh_interval_s)
    labels = list(family.labels)
    if family.kind == "counter":
        return CounterMetricFamily(family.name, documentation, labels=labels)
    return GaugeMetricFamily(family.name, documentation, labels=labels)


def _empty_metric(
    family: Family, refresh_interval_s: float
) -> GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily:
    if isinstance(family, FleetHistogram):
        documentation = family.documentation(refresh_interval_s)
        return HistogramMetricFamily(family.name, documentation, labels=list(family.labels))
    return _sample_metric(family, refresh_interval_s)


class _Collector(Collector):
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


def _both_formats(metric: Metric) -> tuple[bytes, bytes]:
    """One family in text 0.0.4 and in OpenMetrics (without the closing ``# EOF``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector([metric]))
    openmetrics = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), openmetrics.removesuffix(_OPENMETRICS_EOF)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(names: Labels, values: Labels) -> str:
    """``{a="x",b="y"}`` with the names sorted, as prometheus-client writes labels."""
    if not names:
        return ""
    pairs = sorted(zip(names, values, strict=True))
    return "{" + ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in pairs) + "}"


def product_lines(
    family: FleetFamily | FleetHistogram, fleet: ProductFleet, context: FleetContext
) -> bytes:
    """One product's sample lines of one fleet family: the same bytes in both formats."""
    lines: list[str] = []
    if isinstance(family, FleetHistogram):
        bucket_names = (*family.labels, "le")
        for label_values, histogram in family.histograms(fleet, context):
            bounds = [floatToGoString(b) for b in histogram.upper_bounds_s]  # type: ignore[no-untyped-call]
            bounds.append("+Inf")
            counts = [*histogram.cumulative_counts[: len(histogram.upper_bounds_s)]]
            counts.append(histogram.count)
            for bound, count in zip(bounds, counts, strict=True):
                labels = _label_text(bucket_names, (*label_values, bound))
                lines.append(f"{family.name}_bucket{labels} {floatToGoString(count)}\n")  # type: ignore[no-untyped-call]
            labels = _label_text(family.labels, label_values)
            lines.append(f"{family.name}_count{labels} {floatToGoString(histogram.count)}\n")  # type: ignore[no-untyped-call]
            lines.append(f"{family.name}_sum{labels} {floatToGoString(histogram.sum_s)}\n")  # type: ignore[no-untyped-call]
    else:
        for label_values, value in family.samples(fleet, context):
            labels = _label_text(family.labels, label_values)
            lines.append(f"{family.name}{labels} {floatToGoString(value)}\n")  # type: ignore[no-untyped-call]
    return "".join(lines).encode()


@dataclass(frozen=True, slots=True)
class _ProductEntry:
    fleet: ProductFleet
    lines: tuple[bytes, ...]
    """Per fleet family, in catalogue order."""


def _deflate(segment: bytes) -> bytes:
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(segment) + compressor.flush(zlib.Z_SYNC_FLUSH)


class _Assembly:
    """One body under construction: its plain segments and their deflated forms."""

    def __init__(self) -> None:
        self.plain: list[bytes] = []
        self.deflated: list[bytes] = []

    def add(self, plain: bytes, deflated: bytes) -> None:
        self.plain.append(plain)
        self.deflated.append(deflated)

    def body(self, closing: bytes = b"") -> Body:
        """The body, ended by ``closing`` (OpenMetrics' ``# EOF``)."""
        open_plain = b"".join(self.plain)
        open_gzipped = b"".join((_GZIP_HEADER, *self.deflated))
        return Body(open_plain, open_gzipped, zlib.crc32(open_plain), closing)


class ExpositionRenderer:
    """Renders expositions, reusing what is unchanged since the previous call.

    Not thread-safe: one owner (the refresher, under its lock) calls ``render``.
    """

    def __init__(self, segment_products: int = GZIP_SEGMENT_PRODUCTS) -> None:
        self._segment_products = segment_products
        self._context: FleetContext | None = None
        self._products: dict[str, _ProductEntry] = {}
        self._headers: dict[tuple[str, float], tuple[bytes, bytes]] = {}
        self._segments: dict[tuple[bytes, ...], bytes] = {}
        self.last_rendered = 0
        """Products whose lines the last ``render`` produced (the others were reused)."""
        self.last_rendered_families = 0
        """Product-family pieces the last ``render`` produced."""
        self.last_compressed_bytes = 0
        """Plain bytes the last ``render`` compressed (the other segments were reused)."""

    def render(self, data: ExpositionInput, pace: Pace = no_pace) -> RenderedExposition:
        self.last_rendered = self.last_rendered_families = self.last_compressed_bytes = 0
        segments: dict[tuple[bytes, ...], bytes] = {}
        self_metrics = {f.name: _both_formats(_to_metric(f, data)) for f in SELF_FAMILIES}
        text_self, openmetrics_self = self._assemble(data, self_metrics, None, segments)
        if data.snapshot is None:
            text, openmetrics = text_self, openmetrics_self
        else:
            ordered = sorted(data.snapshot.fleets.values(), key=lambda f: f.product.slug)
            entries = self._product_entries(ordered, data.fleet_context, pace)
            text, openmetrics = self._assemble(data, self_metrics, entries, segments, pace)
        self._segments = segments
        return RenderedExposition(text, openmetrics, text_self, openmetrics_self)

    def _product_entries(
        self, ordered: Sequence[ProductFleet], context: FleetContext, pace: Pace
    ) -> list[_ProductEntry]:
        if context != self._context:
            self._context = context
            self._products = {}
        previous, current = self._products, {}
        entries = []
        for fleet in ordered:
            pace()
            product_id = fleet.product.product_id
            entry = previous.get(product_id)
            if entry is None or entry.fleet.product.slug != fleet.product.slug:
                lines = tuple(product_lines(f, fleet, context) for f in FLEET_FAMILIES)
                entry = _ProductEntry(fleet, lines)
                self.last_rendered += 1
                self.last_rendered_families += len(lines)
            elif entry.fleet is not fleet:
                entry = self._renewed(entry, fleet, context)
            current[product_id] = entry
            entries.append(entry)
        self._products = current
        return entries

    def _renewed(
        self, entry: _ProductEntry, fleet: ProductFleet, context: FleetContext
    ) -> _ProductEntry:
        """The entry for a new fleet of the product: each family's lines are rendered again
        only when the figures that family reads differ (a census moves the probe ages of
        every product, and nothing else of most of them)."""
        old = entry.fleet
        lines = tuple(
            lines
            if family.reads(old) == family.reads(fleet)
            else product_lines(family, fleet, context)
            for family, lines in zip(FLEET_FAMILIES, entry.lines, strict=True)
        )
        rendered = sum(new is not kept for new, kept in zip(lines, entry.lines, strict=True))
        self.last_rendered += rendered > 0
        self.last_rendered_families += rendered
        return _ProductEntry(fleet, lines)

    def _header(
        self, family: FleetFamily | FleetHistogram, refresh_interval_s: float
    ) -> tuple[bytes, bytes]:
        key = (family.name, refresh_interval_s)
        header = self._headers.get(key)
        if header is None:
            header = _both_formats(_empty_metric(family, refresh_interval_s))
            self._headers[key] = header
        return header

    def _assemble(
        self,
        data: ExpositionInput,
        self_metrics: dict[str, tuple[bytes, bytes]],
        entries: Sequence[_ProductEntry] | None,
        segments: dict[tuple[bytes, ...], bytes],
        pace: Pace = no_pace,
    ) -> tuple[Body, Body]:
        """Both formats' bodies; without ``entries``, the self-metrics alone."""
        text, openmetrics = _Assembly(), _Assembly()
        fleet_index = 0
        for family in FAMILIES:
            if isinstance(family, SelfFamily):
                for assembly, rendered in zip(
                    (text, openmetrics), self_metrics[family.name], strict=True
                ):
                    assembly.add(rendered, self._deflated((rendered,), segments))
                continue
            index, fleet_index = fleet_index, fleet_index + 1
            if entries is None:
                continue
            headers = self._header(family, data.refresh_interval_s)
            for assembly, header in zip((text, openmetrics), headers, strict=True):
                assembly.add(header, self._deflated((header,), segments))
            column = [e.lines[index] for e in entries]
            step = self._segment_products
            for start in range(0, len(column), step):
                pace()
                run = tuple(column[start : start + step])
                plain = b"".join(run)
                deflated = self._deflated(run, segments)
                text.add(plain, deflated)
                openmetrics.add(plain, deflated)
        return text.body(), openmetrics.body(closing=_OPENMETRICS_EOF)

    def _deflated(self, run: tuple[bytes, ...], segments: dict[tuple[bytes, ...], bytes]) -> bytes:
        """The run's deflated bytes, from the previous body when it had the very same run.

        Runs are keyed by their pieces, whose hashes Python keeps with each ``bytes``."""
        deflated = segments.get(run)
        if deflated is None:
            deflated = self._segments.get(run)
            if deflated is None:
                plain = b"".join(run)
                deflated = _deflate(plain)
                self.last_compressed_bytes += len(plain)
            segments[run] = deflated
        return deflated


def render(data: ExpositionInput) -> RenderedExposition:
    """Every body for ``data``, rendered from nothing."""
    return ExpositionRenderer().render(data)
