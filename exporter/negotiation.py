"""Request header parsing by RFC 9110: ``Accept``, ``Accept-Encoding`` and ``Authorization``.

Pure functions over header strings. Media types, parameter names and content codings are
case-insensitive; parameter values may be quoted strings; ``q`` ranks the choices and
``q=0`` excludes one. A scrape sends the same header every time, so the choices are cached
per header value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

Exposition = Literal["text", "openmetrics"]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAMETER = re.compile(rf"\s*;\s*({_TOKEN})\s*=\s*({_TOKEN}|{_QUOTED})")
_MEDIA_RANGE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})")
_CODING = re.compile(rf"\s*({_TOKEN})")
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)")
_QUOTED_PAIR = re.compile(r"\\(.)")
_CREDENTIALS = re.compile(rf"({_TOKEN}) +(\S+)")


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    q: float

    def param(self, name: str) -> str | None:
        return next((value for key, value in self.params if key == name), None)


def _split_elements(header: str) -> list[str]:
    """The comma-separated elements of a header, commas inside quoted strings kept."""
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    return [element for element in elements if element.strip()]


def _parameters(text: str) -> tuple[tuple[str, str], ...] | None:
    """``;name=value`` pairs, names lower-cased and quoted values unquoted; None if malformed."""
    params = []
    position = 0
    while position < len(text.rstrip()):
        match = _PARAMETER.match(text, position)
        if match is None:
            return None
        name, value = match.group(1).lower(), match.group(2)
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        params.append((name, value))
        position = match.end()
    return tuple(params)


def _quality(params: tuple[tuple[str, str], ...]) -> tuple[float, tuple[tuple[str, str], ...]]:
    """The q-value (1 when absent) and the parameters before it; ValueError when malformed."""
    for index, (name, value) in enumerate(params):
        if name == "q":
            if not _QVALUE.fullmatch(value):
                raise ValueError(value)
            return float(value), params[:index]
    return 1.0, params


def _ranked(
    header: str, head: re.Pattern[str]
) -> Iterator[tuple[re.Match[str], float, tuple[tuple[str, str], ...]]]:
    """Each well-formed element of a ranked list header: the ``head`` match, its q-value and
    the parameters before it. Malformed elements are left out."""
    for element in _split_elements(header):
        match = head.match(element)
        params = _parameters(element[match.end() :]) if match else None
        if match is None or params is None:
            continue
        try:
            q, before_q = _quality(params)
        except ValueError:
            continue
        yield match, q, before_q


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an ``Accept`` header; malformed elements are left out."""
    return [
        MediaRange(match.group(1).lower(), match.group(2).lower(), params, q)
        for match, q, params in _ranked(header, _MEDIA_RANGE)
    ]


@dataclass(frozen=True, slots=True)
class _Offer:
    name: Exposition
    type: str
    subtype: str
    versions: frozenset[str | None]


# Listed in order of preference when a client ranks both the same.
_OFFERS = (
    _Offer("text", "text", "plain", frozenset({None, "0.0.4"})),
    _Offer("openmetrics", "application", "openmetrics-text", frozenset({None, "1.0.0", "0.0.1"})),
)


def _offer_quality(offer: _Offer, ranges: list[MediaRange]) -> tuple[float, int]:
    """The q of the most specific range that matches the offer, with that specificity."""
    best = (0.0, -1)
    for media in ranges:
        if media.type == offer.type and media.subtype == offer.subtype:
            if media.param("version") not in offer.versions:
                continue
            specificity = 3 if media.param("version") is not None else 2
        elif media.type == offer.type and media.subtype == "*":
            specificity = 1
        elif media.type == "*" and media.subtype == "*":
            specificity = 0
        else:
            continue
        if specificity > best[1]:
            best = (media.q, specificity)
    return best


@lru_cache(maxsize=256)
def choose_exposition(accept: str) -> Exposition:
    """The exposition format for an ``Accept`` header: the offer the client ranks highest.

    Text format 0.0.4 when the header is empty, ranks both alike, or accepts neither (a
    scraper that accepts nothing we offer still gets the format every scraper reads).
    """
    ranges = parse_accept(accept)
    if not ranges:
        return "text"
    scored = [(_offer_quality(offer, ranges), -index) for index, offer in enumerate(_OFFERS)]
    (quality, _), preference = max(scored)
    if quality <= 0:
        return "text"
    return _OFFERS[-preference].name


@lru_cache(maxsize=256)
def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip``, ``x-gzip`` or ``*``, with q > 0)."""
    explicit: float | None = None
    wildcard: float | None = None
    for match, q, _ in _ranked(accept_encoding, _CODING):
        coding = match.group(1).lower()
        if coding in ("gzip", "x-gzip"):
            explicit = q if explicit is None else max(explicit, q)
        elif coding == "*":
            wildcard = q
    chosen = explicit if explicit is not None else wildcard
    return chosen is not None and chosen > 0


def parse_credentials(authorization: str) -> tuple[str, str] | None:
    """``(scheme lower-cased, credentials)`` of an ``Authorization`` header, None if malformed.

    The credentials are taken as one run of visible characters: token68 by the RFC, but a
    bearer token file may hold any such token and must keep working."""
    match = _CREDENTIALS.fullmatch(authorization.strip(" \t"))
    if match is None:
        return None
    return match.group(1).lower(), match.group(2)
