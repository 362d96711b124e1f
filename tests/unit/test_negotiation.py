"""RFC 9110 header parsing: a table of header values and the choice each must give."""

import pytest

from exporter.negotiation import accepts_gzip, choose_exposition, parse_accept, parse_credentials

PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)

ACCEPT = [
    ("", "text"),
    ("*/*", "text"),
    ("text/plain", "text"),
    ("application/openmetrics-text", "openmetrics"),
    (PROMETHEUS_3, "openmetrics"),
    ("application/openmetrics-text;q=0.5, text/plain;q=0.9", "text"),
    ("application/openmetrics-text;q=0.9, text/plain;q=0.5", "openmetrics"),
    ("APPLICATION/OpenMetrics-Text; Version=1.0.0", "openmetrics"),
    ('application/openmetrics-text; version="1.0.0"', "openmetrics"),
    ("application/openmetrics-text; version=2.0.0", "text"),
    ("application/openmetrics-text;q=0", "text"),
    ("application/openmetrics-text;q=0, */*", "text"),
    ("text/plain;q=0, application/openmetrics-text;q=0.1", "openmetrics"),
    ("text/plain;q=0, */*;q=0.5", "openmetrics"),
    ("application/*", "openmetrics"),
    ("application/openmetrics-text, text/plain", "text"),
    ("application/openmetrics-text;q=1.5", "text"),
    ("application/openmetrics-text;q=abc, text/plain;q=0.1", "text"),
    ("garbage, application/openmetrics-text", "openmetrics"),
    ('application/openmetrics-text;x="a,b";q=0.8, text/plain;q=0.7', "openmetrics"),
    ("image/png", "text"),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPT)
def test_exposition_follows_the_ranked_accept_header(accept: str, expected: str) -> None:
    assert choose_exposition(accept) == expected


def test_accept_parameters_are_lower_cased_and_unquoted() -> None:
    [media] = parse_accept('Text/Plain; Version="0.0.\\4"; Q=0.25')
    assert (media.type, media.subtype, media.params, media.q) == (
        "text",
        "plain",
        (("version", "0.0.4"),),
        0.25,
    )


ACCEPT_ENCODING = [
    ("", False),
    ("gzip", True),
    ("GZip", True),
    ("x-gzip", True),
    ("gzip;q=0", False),
    ("gzip; q=0.000", False),
    ("gzip;q=0.001", True),
    ("deflate, gzip;q=0.5", True),
    ("*", True),
    ("*;q=0", False),
    ("gzip;q=0, *", False),
    ("identity", False),
    ("br, deflate", False),
    ("gzip;q=2", False),
]


@pytest.mark.parametrize(("accept_encoding", "expected"), ACCEPT_ENCODING)
def test_gzip_follows_the_ranked_accept_encoding(accept_encoding: str, expected: bool) -> None:
    assert accepts_gzip(accept_encoding) is expected


CREDENTIALS = [
    ("Bearer abc.def", ("bearer", "abc.def")),
    ("bearer abc", ("bearer", "abc")),
    ("BEARER   abc", ("bearer", "abc")),
    ("Basic dXNlcjpwYXNz", ("basic", "dXNlcjpwYXNz")),
    ("Bearer", None),
    ("Bearer a b", None),
    ("abc", None),
    ("", None),
]


@pytest.mark.parametrize(("authorization", "expected"), CREDENTIALS)
def test_the_auth_scheme_is_case_insensitive(
    authorization: str, expected: tuple[str, str] | None
) -> None:
    assert parse_credentials(authorization) == expected
