"""The demo's Alertmanager webhook receiver: every notification printed as one line.

The shipped routing sends to the ``pager`` and ``tickets`` receivers; the demo points both
at this receiver (``POST /<receiver name>``), so a newcomer sees in the terminal what an
on-call engineer would be paged with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from exporter.errors import ApiError, error_response
from exporter.logs import log_event

logger = logging.getLogger("exporter.demo")


class BadNotification(ValueError):
    pass


def notification_line(receiver: str, payload: Any) -> str:
    """``pager: FIRING EngineFleetCritical product=acme severity=critical: <summary>``.

    Alertmanager sends one notification per group (``group_by`` of the route); the line names
    the group's labels, how many alerts it holds when more than one, and the common summary.
    """
    if not isinstance(payload, Mapping):
        raise BadNotification("the body is not a JSON object")
    alerts = payload.get("alerts")
    status = payload.get("status")
    if not isinstance(alerts, list) or not isinstance(status, str):
        raise BadNotification("not an Alertmanager webhook notification (status, alerts)")
    group = payload.get("groupLabels") or payload.get("commonLabels") or {}
    common_labels = payload.get("commonLabels") or {}
    annotations = payload.get("commonAnnotations") or {}
    if not all(isinstance(m, Mapping) for m in (group, common_labels, annotations)):
        raise BadNotification("labels and annotations must be JSON objects")
    name = group.get("alertname") or common_labels.get("alertname") or "?"
    labels = {k: v for k, v in group.items() if k != "alertname"}
    if "severity" in common_labels:
        labels.setdefault("severity", common_labels["severity"])
    parts = [f"{receiver}: {status.upper()} {name}"]
    parts += [f"{key}={value}" for key, value in sorted(labels.items())]
    if len(alerts) != 1:
        parts.append(f"({len(alerts)} alerts)")
    line = " ".join(parts)
    summary = annotations.get("summary")
    return f"{line}: {summary}" if summary else line


def receiver_app(emit: Callable[[str], None]) -> web.Application:
    """An app that answers Alertmanager's webhook POSTs and hands each line to ``emit``."""

    async def notify(request: web.Request) -> web.Response:
        receiver = request.match_info["receiver"]
        try:
            line = notification_line(receiver, json.loads(await request.read()))
        except ValueError as error:
            reason = str(error) if isinstance(error, BadNotification) else "the body is not JSON"
            log_event(logger, logging.WARNING, "demo_receiver_rejected", reason=reason)
            return error_response(ApiError(400, "INVALID_NOTIFICATION", reason))
        emit(line)
        return web.json_response({"status": "received"})

    app = web.Application()
    app.router.add_post("/{receiver:[A-Za-z0-9_-]+}", notify)
    return app
