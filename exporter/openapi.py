"""The OpenAPI 3 description of the JSON API; tests validate real responses against it."""

from __future__ import annotations

from typing import Any

from exporter import __version__
from exporter.domain import ENGINE_LISTING_FIELDS, ENGINE_STATES

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_responses(*statuses: int) -> dict[str, Any]:
    descriptions = {
        400: "Invalid query parameter (INVALID_PARAMETER).",
        401: "Missing or unknown platform key (INVALID_PLATFORM_KEY).",
        503: "Data unavailable (FLEET_DATA_UNAVAILABLE, FLEET_DATA_STALE, DATABASE_UNAVAILABLE).",
    }
    return {
        str(status): {
            "description": descriptions[status],
            "content": {"application/json": {"schema": _ERROR}},
        }
        for status in statuses
    }


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


_COUNT = {"type": "integer", "minimum": 0}
_TIMESTAMP = {"type": "string", "format": "date-time"}


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
                "platformKey": {"type": "apiKey", "in": "header", "name": "X-Platform-Key"}
            },
            "schemas": {
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
                "Engine": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": list(ENGINE_LISTING_FIELDS),
                    "properties": {
                        "engine_id": {"type": "string", "format": "uuid"},
                        "user_id": {"type": "string"},
                        "status": {"type": "string"},
                        "url": {"type": "string", "nullable": True},
                        "engine_version": {"type": "string"},
                        "created_at": _TIMESTAMP,
                        "last_health_at": {**_TIMESTAMP, "nullable": True},
                    },
                },
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
                        "health": {"type": "string", "enum": ["ok", "degraded", "critical"]},
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
            "/engines": {
                "get": {
                    "summary": "List the calling product's engines (live, paginated).",
                    "security": [{"platformKey": []}],
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": list(ENGINE_STATES)},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 100,
                            },
                        },
                        {
                            "name": "offset",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "description": "Keyset cursor from a Link rel=next header;"
                            " not combined with offset.",
                            "schema": {"type": "string"},
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
                        **_error_responses(400, 401, 503),
                    },
                }
            },
            "/status": {
                "get": {
                    "summary": "Fleet health snapshot of the calling product.",
                    "security": [{"platformKey": []}],
                    "responses": {
                        "200": {
                            **_json("Status", "Counts per state and overall health."),
                            "headers": snapshot_headers,
                        },
                        **_error_responses(401, 503),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Rolling-hour and lifetime figures of the calling product.",
                    "security": [{"platformKey": []}],
                    "responses": {
                        "200": {
                            **_json("Metrics", "Figures from the audit log."),
                            "headers": snapshot_headers,
                        },
                        **_error_responses(401, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness.",
                    "responses": {"200": {"description": "Process is up."}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: a refresh succeeded and the data is fresh.",
                    "responses": {"200": {"description": "Ready."}, **_error_responses(503)},
                }
            },
            prometheus_path: {
                "get": {
                    "summary": "Prometheus metrics of every product (text or OpenMetrics).",
                    "responses": {
                        "200": {
                            "description": "Exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }
