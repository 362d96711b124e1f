"""The one error envelope: ``{"error": {"code": ..., "message": ...}}``.

Handlers raise ``ApiError``; the middleware turns it — and aiohttp's own 404/405, and any
unexpected exception — into the envelope, so every error answer has the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

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


def error_response(error: ApiError) -> web.Response:
    return web.json_response(
        {"error": {"code": error.code, "message": error.message}},
        status=error.status,
        headers=error.headers,
    )


_HTTP_ERROR_CODES = {
    404: ("NOT_FOUND", "No such endpoint."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed on this endpoint."),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code, message = _HTTP_ERROR_CODES.get(
            error.status, ("HTTP_ERROR", error.reason or "Request failed.")
        )
        headers = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        return error_response(ApiError(error.status, code, message, headers=headers))
    except Exception as error:
        log_event(
            logger,
            logging.ERROR,
            "request_failed",
            path=request.path,
            error=type(error).__name__,
            exc_info=error,
        )
        return error_response(ApiError(500, "INTERNAL_ERROR", "Internal error."))
