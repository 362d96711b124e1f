"""The HTTP edge: the listening socket, the parser limits, and the answers given before routing.

aiohttp's request handler (one per connection) answers what its parser rejects with a text
body that quotes the offending bytes, and logs each at ``error`` with a traceback. The edge
subclasses it through its documented parts (``handle_error``, the protocol callbacks) and
builds the connections from its own ``web.Server``, fed with the application's request
handler and factory, so that:

* a request the parser rejects gets the JSON envelope (400, 414, 431), nothing of it echoed,
  and one ``info`` line per kind per ``REJECTION_LOG_INTERVAL_S`` with a count;
* an error aiohttp raises around the routes (an ``Expect`` it does not know, a target no
  route can match) is answered in the envelope too;
* a request head must be complete ``header_timeout_s`` after its first byte (or after the
  connection opened), an idle connection is closed after ``keepalive_timeout_s``, and at most
  ``max_connections`` are open at once: beyond it a new connection is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from exporter.api import LIVE_METRICS, WEB_CONFIG
from exporter.config import ListenSettings, Settings
from exporter.errors import ApiError, Observe, error_response, http_error, internal_error
from exporter.logs import log_event
from exporter.webconfig import WebConfigSource

logger = logging.getLogger("exporter.http")

#: Longest request line (method, target, version): a longer URL is ``414 URI_TOO_LONG``.
MAX_REQUEST_LINE = 8192
#: Longest header value: platform keys and tokens up to 8 KiB reach the handlers.
MAX_HEADER_VALUE = 8192
#: Allowance for a header's name and separator, so that an 8 KiB value fits either parser
#: (the C parser bounds the value, the pure-Python one the whole line).
_HEADER_NAME_ALLOWANCE = 64
MAX_HEADERS = 100
REJECTION_LOG_INTERVAL_S = 10.0

Clock = Callable[[], float]


@dataclass(slots=True)
class RateLimitedCounts:
    """Counts events per kind and says when a line may be logged: the first of a kind at
    once, then at most one per ``interval_s``, carrying how many happened since the last."""

    interval_s: float
    clock: Clock = time.monotonic
    _pending: dict[str, int] = field(default_factory=dict)
    _last_logged: dict[str, float] = field(default_factory=dict)

    def count(self, kind: str) -> int | None:
        """Record one event of ``kind``; the count to log now, or None to stay quiet."""
        pending = self._pending.get(kind, 0) + 1
        now = self.clock()
        last = self._last_logged.get(kind)
        if last is not None and now - last < self.interval_s:
            self._pending[kind] = pending
            return None
        self._pending[kind] = 0
        self._last_logged[kind] = now
        return pending


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    code: str
    message: str
    kind: str


def classify_rejection(error: BaseException | None) -> Rejection:
    """The answer to a request the HTTP parser refused: status, code, a fixed message that
    quotes nothing of the input, and the kind it is counted under in the log."""
    kind = type(error).__name__ if error is not None else "unknown"
    if isinstance(error, LineTooLong):
        limit = error.args[1] if len(error.args) > 1 else None
        if limit == MAX_REQUEST_LINE:
            return Rejection(414, "URI_TOO_LONG", "The request line is too long.", kind)
        return Rejection(
            431,
            "HEADERS_TOO_LARGE",
            f"A request header is longer than {MAX_HEADER_VALUE} bytes.",
            kind,
        )
    if isinstance(error, BadHttpMessage) and error.message.startswith("Too many headers"):
        return Rejection(
            431, "HEADERS_TOO_LARGE", f"More than {MAX_HEADERS} request headers.", "TooManyHeaders"
        )
    return Rejection(400, "BAD_REQUEST", "The request is not valid HTTP/1.1.", kind)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class EdgeProtocol(RequestHandler):
    """One connection: aiohttp's request handler with the edge's error answers and head timer."""

    def __init__(self, edge: EdgeServer, **kwargs: Any) -> None:
        super().__init__(edge, **kwargs)
        self._edge = edge
        self._head_started: float | None = None
        """When the request head now arriving began (or the connection opened); None
        between heads."""
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_begins()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data.endswith(b"\r\n\r\n"):
            # The common case, checked first because it costs one comparison: the chunk ends
            # with a blank line, so whatever heads it holds are complete and none is pending.
            self._head_started = None
            self._head_tail = b""
        elif data:
            self._track_head(data)
        RequestHandler.data_received(self, data)

    def _track_head(self, data: bytes) -> None:
        """Note when a head starts and when its blank line arrives (a chunk that ends with
        none: a head split across chunks, or a body)."""
        if self._head_started is None:
            self._head_begins()
        seen = self._head_tail + data
        end = max(seen.rfind(b"\r\n\r\n") + 4, seen.rfind(b"\n\n") + 2)
        if end >= 2:
            self._head_started = None
            if end < len(seen):
                self._head_begins()
        self._head_tail = seen[-3:]

    def _head_begins(self) -> None:
        """One timer per connection, moved only when it fires early (as aiohttp's own
        keep-alive timer is): no timer is made and cancelled for every request."""
        loop = asyncio.get_running_loop()
        self._head_started = loop.time()
        if self._head_timer is None:
            self._head_timer = loop.call_at(
                self._head_started + self._edge.listen.header_timeout_s, self._head_check
            )

    def _head_check(self) -> None:
        self._head_timer = None
        if self._head_started is None:
            return
        deadline = self._head_started + self._edge.listen.header_timeout_s
        loop = asyncio.get_running_loop()
        if loop.time() < deadline:
            self._head_timer = loop.call_at(deadline, self._head_check)
            return
        self._edge.note("request_head_timeout", "HeaderTimeout")
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The parser's rejections, answered in the envelope; nothing of the input is used."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already on its way; the connection is cut")
        if status >= 500 and not isinstance(exc, HttpProcessingError):
            log_event(
                logger,
                logging.ERROR,
                "request_failed",
                error=type(exc).__name__ if exc is not None else None,
                exc_info=exc,
            )
            response = error_response(internal_error())
        else:
            rejection = classify_rejection(exc)
            self._edge.note("request_rejected", rejection.kind, status=rejection.status)
            response = error_response(ApiError(rejection.status, rejection.code, rejection.message))
        self._edge.add_configured_headers(response)
        self._edge.observe_other(response.status, 0.0)
        response.force_close()
        return response


class EdgeServer(web.Server):
    """The connection factory of the edge: the application's handler behind the guard, which
    also adds the web configuration's response headers to every answer."""

    def __init__(
        self,
        app_server: web.Server,
        listen: ListenSettings,
        web_config: WebConfigSource,
        observe_other: Observe,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            self._guarded(app_server.request_handler),
            request_factory=app_server.request_factory,
            **kwargs,
        )
        self.listen = listen
        self.web_config = web_config
        self.observe_other = observe_other
        self._protocol_kwargs = kwargs
        self._open: set[RequestHandler] = set()
        self._rejections = RateLimitedCounts(REJECTION_LOG_INTERVAL_S)

    def _guarded(self, handler: Handler) -> Handler:
        """The application's handler, with the envelope for what aiohttp raises before a
        route's handler runs (counted under ``other`` with no duration, as the parser's
        rejections are: no handler ran) and the configured headers on every answer. The
        routes time and count their own answers."""

        async def answer(request: web.BaseRequest) -> web.StreamResponse:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                response = error_response(http_error(error.status))
                self.observe_other(response.status, 0.0)
            if self.web_config.path is not None:
                # Without a file there is nothing to add, and asking for it would cost a
                # call on every answer.
                self.add_configured_headers(response)
            return response

        return answer

    def add_configured_headers(self, response: web.StreamResponse) -> None:
        for name, value in self.web_config.current().headers:
            response.headers[name] = value

    def note(self, event: str, kind: str, *, status: int | None = None) -> None:
        """Log a client mistake at info, at most once per kind per interval, with a count."""
        count = self._rejections.count(kind)
        if count is not None:
            log_event(logger, logging.INFO, event, kind=kind, status=status, count=count)

    def __call__(self) -> EdgeProtocol:
        return EdgeProtocol(self, loop=asyncio.get_running_loop(), **self._protocol_kwargs)

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        if len(self._open) >= self.listen.max_connections:
            self.note("connection_refused", "TooManyConnections")
            transport.close()
            return
        self._open.add(handler)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        self._open.discard(handler)
        super().connection_lost(handler, exc)


class _TLSHandshake(asyncio.Protocol):
    """The first protocol of a TLS connection: it upgrades the accepted TCP connection with
    the web configuration's context of the moment (so a changed certificate, CA or client
    auth type holds from the next connection on), then hands it to an ``EdgeProtocol``.

    The handshake is bounded by the header timeout; a failed one is counted and logged
    like a rejected request."""

    def __init__(self, edge: EdgeServer) -> None:
        self._edge = edge
        self._protocol: EdgeProtocol | None = None
        self._early: list[bytes] = []
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(self._upgrade(transport))

    async def _upgrade(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            secured = await loop.start_tls(
                transport,
                self,
                self._edge.web_config.ssl_context(),
                server_side=True,
                ssl_handshake_timeout=self._edge.listen.header_timeout_s,
            )
        except (OSError, TimeoutError) as error:
            self._edge.note("tls_handshake_failed", type(error).__name__)
            transport.close()
            return
        if secured is None:
            transport.close()
            return
        protocol = self._edge()
        secured.set_protocol(protocol)
        protocol.connection_made(secured)
        self._protocol = protocol
        for data in self._early:
            protocol.data_received(data)
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        if self._protocol is None:
            self._early.append(data)
        else:
            self._protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._protocol is not None:
            self._protocol.connection_lost(exc)
        elif self._task is not None:
            self._task.cancel()


def edge_server(
    app_server: web.Server,
    listen: ListenSettings,
    web_config: WebConfigSource,
    observe_other: Observe,
    *,
    access_log: bool,
) -> EdgeServer:
    return EdgeServer(
        app_server,
        listen,
        web_config,
        observe_other,
        keepalive_timeout=listen.keepalive_timeout_s,
        max_line_size=MAX_REQUEST_LINE,
        max_field_size=MAX_HEADER_VALUE + _HEADER_NAME_ALLOWANCE,
        max_headers=MAX_HEADERS,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )


class EdgeSite(web.BaseSite):
    """A TCP site whose connections come from an ``EdgeServer``; stopping it stops listening,
    lets in-flight requests finish (up to the runner's shutdown timeout) and closes the rest."""

    __slots__ = ("_bound_port", "_edge", "_host", "_port", "_shutdown_timeout_s")

    def __init__(
        self,
        runner: web.BaseRunner,
        edge: EdgeServer,
        host: str,
        port: int,
        *,
        shutdown_timeout_s: float,
    ) -> None:
        super().__init__(runner)
        self._edge = edge
        self._host = host
        self._port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        self._bound_port = port

    @property
    def name(self) -> str:
        scheme = "https" if self._edge.web_config.tls_enabled else "http"
        return f"{scheme}://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the one picked when ``listen.port`` is 0)."""
        return self._bound_port

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        edge = self._edge
        factory: Callable[[], asyncio.BaseProtocol] = (
            (lambda: _TLSHandshake(edge)) if edge.web_config.tls_enabled else edge
        )
        server = await loop.create_server(factory, self._host, self._port, reuse_address=True)
        self._server = server
        self._bound_port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await super().stop()
        await asyncio.sleep(0)
        self._edge.pre_shutdown()
        await self._edge.shutdown(self._shutdown_timeout_s)


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, settings: Settings, *, shutdown_timeout_s: float
) -> AsyncIterator[EdgeSite]:
    """Run ``app`` behind the edge on ``settings.listen`` (with TLS when its web configuration
    says so) until the block exits; then stop listening, finish in-flight requests and run
    the app's cleanup."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        assert runner.server is not None, "set up above"
        edge = edge_server(
            runner.server,
            settings.listen,
            app[WEB_CONFIG],
            app[LIVE_METRICS].http.observer("other"),
            access_log=settings.log.level == "debug",
        )
        site = EdgeSite(
            runner,
            edge,
            settings.listen.host,
            settings.listen.port,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        await site.start()
        yield site
    finally:
        await runner.cleanup()
