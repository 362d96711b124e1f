"""The paths the service serves besides the scrape endpoint, by route name.

The route table, the OpenAPI document and the configuration check (the scrape path must not
shadow one of these) all read this table; a route's name is the ``handler`` label its HTTP
self-metrics are counted under.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

ROUTE_PATHS: Mapping[str, str] = MappingProxyType(
    {
        "engines": "/engines",
        "status": "/status",
        "metrics": "/metrics",
        "healthz": "/healthz",
        "readyz": "/readyz",
        "landing": "/",
        "openapi": "/openapi.json",
    }
)
