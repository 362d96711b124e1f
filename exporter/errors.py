"""The one error envelope: ``{"error": {"code": ..., "message": ...}}``.

Handlers raise ``ApiError``; their ``endpoint`` wrapper turns it, and any unexpected
exception, into the envelope; unknown paths and methods reach the ``not_found`` and
``method_not_allowed`` routes. Every error answer has the same shape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from exporter.logs import log_event

logger = logging.getLogger("exporter.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def invalid_platform_key() -> ApiError:
    return ApiError(401, "INVALID_PLATFORM_KEY", "Missing or unknown X-Platform-Key header.")


def invalid_parameter(name: str, expected: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER", f"Query parameter '{name}' must be {expected}.")


def internal_error() -> ApiError:
    """The answer to an exception nothing expected: nothing of it is told to the client."""
    return ApiError(500, "INTERNAL_ERROR", "Internal error.")


HTTP_ERROR_CODES = {
    404: ("NOT_FOUND", "No such endpoint."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed on this endpoint."),
    417: ("EXPECTATION_FAILED", "Only 'Expect: 100-continue' is supported."),
}
"""The code and message of the HTTP errors routing answers, whether a catch-all route
answers them or aiohttp raises them around the routes; any other status is answered
under its standard name and phrase."""


def http_error(status: int, *, headers: dict[str, str] | None = None) -> ApiError:
    code, message = HTTP_ERROR_CODES.get(
        status, (HTTPStatus(status).name, HTTPStatus(status).phrase + ".")
    )
    return ApiError(status, code, message, headers=headers)


def error_response(error: ApiError) -> web.Response:
    return web.json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.status,
        headers=error.headers,
    )


Observe = Callable[[int, float], None]
"""Told each answer's status and how long it took (the route's HTTP self-metrics)."""


def endpoint(handler: Handler, observe: Observe) -> Handler:
    """Wrap a handler so that an ``ApiError``, or any unexpected exception, is answered in the
    envelope, and every answer is counted with ``observe``. (One wrapper frame per route
    rather than a middleware: a middleware puts two extra layers on every request, the
    snapshot endpoints included.)"""

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            response = await handler(request)
        except ApiError as error:
            response = error_response(error)
        except Exception as error:
            log_event(
                logger,
                logging.ERROR,
                "request_failed",
                path=request.path,
                error=type(error).__name__,
                exc_info=error,
            )
            response = error_response(internal_error())
        observe(response.status, time.perf_counter() - started)
        return response

    return answer


async def not_found(request: web.Request) -> web.StreamResponse:
    """The last route: every path no other route claims."""
    return error_response(http_error(404))


async def method_not_allowed(request: web.Request) -> web.StreamResponse:
    """Registered after each endpoint's GET route: any other method on that path."""
    return error_response(http_error(405, headers={"Allow": "GET, HEAD"}))
