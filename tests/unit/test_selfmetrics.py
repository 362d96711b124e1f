"""HTTP self-metrics: bounded route names, cumulative buckets, and the live part appended to
a pre-rendered body in both formats, plain and gzipped."""

import gzip

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.exposition import Body, ExpositionRenderer
from exporter.selfmetrics import HttpStats, LiveMetrics
from tests.unit.test_exposition_golden import golden_input


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }


def test_requests_and_durations_are_counted_per_route_with_cumulative_buckets() -> None:
    live = LiveMetrics(max_age_s=0)
    observe = live.http.observer("status")
    for seconds in (0.0005, 0.003, 0.003, 20.0):
        observe(200, seconds)
    observe(401, 0.0001)
    samples = _samples(live.render(openmetrics=False).decode())

    requests = "engine_fleet_exporter_http_requests_total"
    assert samples[(requests, (("code", "200"), ("handler", "status")))] == 4
    assert samples[(requests, (("code", "401"), ("handler", "status")))] == 1
    bucket = "engine_fleet_exporter_http_request_duration_seconds_bucket"
    for le, expected in (("0.001", 2), ("0.0025", 2), ("0.005", 4), ("10.0", 4), ("+Inf", 5)):
        assert samples[(bucket, (("handler", "status"), ("le", le)))] == expected
    total = samples[
        ("engine_fleet_exporter_http_request_duration_seconds_sum", (("handler", "status"),))
    ]
    assert total == pytest.approx(20.0066)
    assert not any(name.endswith("_created") for name, _ in samples)
    assert samples[("process_open_fds", ())] > 0


def test_an_unknown_route_name_is_refused() -> None:
    with pytest.raises(AssertionError):
        HttpStats().observer("/engines/../x")


def test_the_live_part_is_rendered_again_only_after_its_max_age() -> None:
    now = [0.0]
    live = LiveMetrics(max_age_s=1.0, clock=lambda: now[0])
    first = live.render(openmetrics=False)
    live.http.observer("healthz")(200, 0.001)
    assert live.render(openmetrics=False) == first
    now[0] = 1.0
    assert b'handler="healthz"' in live.render(openmetrics=False)


@pytest.mark.parametrize("openmetrics", [False, True])
def test_a_tail_appended_to_a_rendered_body_is_valid_plain_and_gzipped(openmetrics: bool) -> None:
    rendered = ExpositionRenderer().render(golden_input())
    body: Body = rendered.body(openmetrics=openmetrics, include_fleet=True)
    live = LiveMetrics(max_age_s=0)
    live.http.observer("prometheus")(200, 0.002)
    tail = live.render(openmetrics=openmetrics)

    plain, gzipped = body.plain_with(tail), body.gzipped_with(tail)

    assert gzip.decompress(gzipped) == plain
    assert plain.startswith(body.open_plain)
    assert tail in plain
    if openmetrics:
        assert plain.endswith(b"# EOF\n")
        assert plain.count(b"# EOF") == 1
        names = {family.name for family in parse_om(plain.decode())}
    else:
        names = {family.name for family in parse_text(plain.decode())}
    assert {"engine_fleet_engines", "engine_fleet_exporter_http_requests", "python_info"} <= names
    assert gzip.decompress(body.gzipped) == body.plain


def test_an_unchanged_body_and_live_part_give_the_very_same_answer() -> None:
    now = [0.0]
    live = LiveMetrics(max_age_s=1.0, clock=lambda: now[0])
    rendered = ExpositionRenderer().render(golden_input())
    body = rendered.body(openmetrics=False, include_fleet=True)
    first = live.answer(body, openmetrics=False, gzipped=True)
    assert live.answer(body, openmetrics=False, gzipped=True) is first
    assert gzip.decompress(first) == live.answer(body, openmetrics=False, gzipped=False)
    live.http.observer("prometheus")(200, 0.001)
    now[0] = 1.0
    fresh = live.answer(body, openmetrics=False, gzipped=True)
    assert fresh is not first
    assert b'handler="prometheus"' in gzip.decompress(fresh)
