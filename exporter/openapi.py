"""The OpenAPI 3 description of the JSON API; tests validate real responses against it and a
bounded schemathesis run checks the live service against every rule it states."""

from __future__ import annotations

import types
from dataclasses import fields
from datetime import datetime
from typing import Any, get_args, get_type_hints

from exporter import __version__
from exporter.domain import ENGINE_STATES, EngineRecord, Health
from exporter.paging import CURSOR_PATTERN, DEFAULT_LIMIT, LIMIT_RANGE, MAX_OFFSET
from exporter.routes import ROUTE_PATHS

_ERROR = {"$ref": "#/components/schemas/Error"}


_EDGE_ERRORS = {
    400: "Not valid HTTP/1.1 (BAD_REQUEST)",
    414: "Request line longer than 8192 bytes (URI_TOO_LONG).",
    431: "A header value longer than 8 KiB, or more than 100 headers (HEADERS_TOO_LARGE).",
}
"""Answers of the HTTP edge, before any route: every operation may give them."""


def _error_responses(**descriptions: str) -> dict[str, Any]:
    """The operation's own error answers (``e401="..."``) with the edge's; one envelope."""
    answers = {int(key.removeprefix("e")): text for key, text in descriptions.items()}
    for status, text in _EDGE_ERRORS.items():
        answers[status] = f"{answers[status]}; or {text}" if status in answers else text
    return {
        str(status): {
            "description": answers[status]
            if answers[status].endswith(".")
            else answers[status] + ".",
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status in sorted(answers)
    }


_UNKNOWN_KEY = "Missing, unknown or repeated X-Platform-Key header (INVALID_PLATFORM_KEY)."
_NOT_LOADED = "Data unavailable (FLEET_DATA_UNAVAILABLE, FLEET_DATA_STALE)."


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


_COUNT = {"type": "integer", "minimum": 0}
_STATUS = {"type": "string", "enum": list(ENGINE_STATES)}
_LIMIT = {
    "type": "integer",
    "minimum": LIMIT_RANGE[0],
    "maximum": LIMIT_RANGE[1],
    "default": DEFAULT_LIMIT,
}
_OFFSET = {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}
_AFTER = {"type": "string", "pattern": CURSOR_PATTERN}


_TIMESTAMP = {"type": "string", "format": "date-time"}
_SCHEMA_OF_TYPE: dict[object, dict[str, Any]] = {str: {"type": "string"}, datetime: _TIMESTAMP}


def _record_schema(record: type[Any]) -> dict[str, Any]:
    """A closed object schema of a record's fields, typed from their annotations: every field
    present, ``X | None`` nullable, a field's ``format`` metadata as its string format."""
    hints = get_type_hints(record)
    properties: dict[str, Any] = {}
    for item in fields(record):
        hint = hints[item.name]
        types_of = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        (base,) = (t for t in types_of if t is not types.NoneType)
        schema = {**_SCHEMA_OF_TYPE[base], **item.metadata}
        if types.NoneType in types_of:
            schema["nullable"] = True
        properties[item.name] = schema
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties),
        "properties": properties,
    }


def openapi_document(prometheus_path: str) -> dict[str, Any]:
    snapshot_headers = {
        "Last-Modified": {
            "description": "Time of the snapshot served.",
            "schema": {"type": "string"},
        },
        "Cache-Control": {
            "description": "max-age: seconds until the next refresh.",
            "schema": {"type": "string"},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "engine-fleet-exporter",
            "version": __version__,
            "description": "Fleet read API of the engine orchestrator, per product.",
        },
        "components": {
            "securitySchemes": {
                "platformKey": {"type": "apiKey", "in": "header", "name": "X-Platform-Key"},
                "bearerToken": {"type": "http", "scheme": "bearer"},
                "basicAuth": {"type": "http", "scheme": "basic"},
            },
            "schemas": {
                "Readiness": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["status", "audit", "audit_progress"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ready"]},
                        "audit": {"type": "string", "enum": ["backfilling", "counted"]},
                        "audit_progress": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
                "Error": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Engine": _record_schema(EngineRecord),
                "EngineList": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["engines", "total"],
                    "properties": {
                        "engines": {
                            "type": "array",
                            "items": {"$ref": "#/components/schemas/Engine"},
                        },
                        "total": {
                            **_COUNT,
                            "description": "Engines matching the filter as of the latest"
                            " refresh (the count /status shows); counted live when the"
                            " snapshot is stale.",
                        },
                    },
                },
                "Status": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["total", "by_status", "health", "unhealthy_count"],
                    "properties": {
                        "total": _COUNT,
                        "by_status": {
                            "type": "object",
                            "required": list(ENGINE_STATES),
                            "additionalProperties": _COUNT,
                        },
                        "health": {"type": "string", "enum": [state.value for state in Health]},
                        "unhealthy_count": _COUNT,
                    },
                },
                "Metrics": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": [
                        "provisions_1h",
                        "crashes_1h",
                        "restarts_1h",
                        "avg_boot_ms",
                        "total_provisions",
                        "total_destroys",
                    ],
                    "properties": {
                        "provisions_1h": _COUNT,
                        "crashes_1h": _COUNT,
                        "restarts_1h": _COUNT,
                        "avg_boot_ms": {"type": "integer", "nullable": True},
                        "total_provisions": _COUNT,
                        "total_destroys": _COUNT,
                    },
                },
            },
        },
        "paths": {
            ROUTE_PATHS["engines"]: {
                "get": {
                    "summary": "List the calling product's engines (live, paginated).",
                    "security": [{"platformKey": []}],
                    # One exploded object parameter, so that the rule between two of its
                    # members (after excludes offset) can be stated: OpenAPI has no way to
                    # relate separate parameters. On the wire these are plain query
                    # parameters: ?status=...&limit=...&offset=... or ...&after=...
                    "parameters": [
                        {
                            "name": "page",
                            "in": "query",
                            "required": False,
                            "style": "form",
                            "explode": True,
                            "description": "status, limit, and either offset or after"
                            " (a keyset cursor from a Link rel=next header), never both;"
                            " each at most once.",
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "status": _STATUS,
                                    "limit": _LIMIT,
                                    "offset": _OFFSET,
                                    "after": _AFTER,
                                },
                                "not": {"required": ["offset", "after"]},
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            **_json("EngineList", "One page, ordered by created_at, engine_id."),
                            "headers": {
                                "Link": {
                                    "description": "rel=next link to the following page"
                                    " (keyset cursor) when this page is full.",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **_error_responses(
                            e400="A query parameter out of its rules, given twice, or after"
                            " with offset (INVALID_PARAMETER)",
                            e401=_UNKNOWN_KEY,
                            e503=_NOT_LOADED[:-2] + ", DATABASE_UNAVAILABLE).",
                        ),
                    },
                }
            },
            ROUTE_PATHS["status"]: {
                "get": {
                    "summary": "Fleet health snapshot of the calling product.",
                    "security": [{"platformKey": []}],
                    "responses": {
                        "200": {
                            **_json("Status", "Counts per state and overall health."),
                            "headers": snapshot_headers,
                        },
                        **_error_responses(e401=_UNKNOWN_KEY, e503=_NOT_LOADED),
                    },
                }
            },
            ROUTE_PATHS["metrics"]: {
                "get": {
                    "summary": "Rolling-hour and lifetime figures of the calling product.",
                    "security": [{"platformKey": []}],
                    "responses": {
                        "200": {
                            **_json("Metrics", "Figures from the audit log."),
                            "headers": snapshot_headers,
                        },
                        **_error_responses(
                            e401=_UNKNOWN_KEY,
                            e503=_NOT_LOADED[:-2] + ", AUDIT_BACKFILL_RUNNING: the audit history"
                            " present at start is still being counted, with Retry-After and the"
                            " progress in the message).",
                        ),
                    },
                }
            },
            ROUTE_PATHS["healthz"]: {
                "get": {
                    "summary": "Liveness.",
                    "responses": {
                        "200": {
                            "description": "Process is up.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        **_error_responses(),
                    },
                }
            },
            ROUTE_PATHS["readyz"]: {
                "get": {
                    "summary": "Readiness: a refresh succeeded and the data is fresh.",
                    "responses": {
                        "200": _json(
                            "Readiness",
                            "Ready: fleet state is fresh; the body says whether the audit"
                            " history is counted yet.",
                        ),
                        **_error_responses(
                            e503="Not ready (FLEET_DATA_UNAVAILABLE, FLEET_DATA_STALE)."
                        ),
                    },
                }
            },
            prometheus_path: {
                "get": {
                    "summary": "Prometheus metrics of every product (text or OpenMetrics).",
                    "description": "Credentials are needed only when a bearer token file or"
                    " basic auth users are configured.",
                    "security": [{}, {"bearerToken": []}, {"basicAuth": []}],
                    "responses": {
                        "200": {
                            "description": "Exposition, text 0.0.4 or OpenMetrics 1.0 as the"
                            " Accept header ranks them.",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        },
                        **_error_responses(
                            e401="Credentials configured but missing, wrong or repeated"
                            " (UNAUTHORIZED)."
                        ),
                    },
                }
            },
        },
    }
