"""The baseline: a bare aiohttp server that answers each path with fixed bytes.

It runs as its own process, like the exporter, and answers each path with exactly the body
and the response headers the exporter sent for it (all but those aiohttp writes itself:
``Date``, ``Server``, ``Content-Length``, ``Connection``), while the load sends both servers
the very same request, platform key included. So parsing the request and writing the answer's
headers, aiohttp's work on the same bytes, is on both sides, and the throughput ratio
measures what the exporter adds on top of aiohttp itself: routing to its handlers, the
edge's guard, authentication, freshness, the self-metrics. Usage: ``python -m bench.bare
--port N MANIFEST.json`` where the manifest maps paths to ``{"file": ..., "headers":
[[name, value], ...]}``.
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _fixed(body: bytes, headers: CIMultiDict[str]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    return handler


def build_app(manifest: dict[str, dict[str, object]]) -> web.Application:
    app = web.Application()
    for path, entry in manifest.items():
        body = Path(str(entry["file"])).read_bytes()
        headers = entry["headers"]
        assert isinstance(headers, list)
        app.router.add_get(path, _fixed(body, CIMultiDict((str(n), str(v)) for n, v in headers)))
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, help="serve TLS with this certificate (PEM)")
    parser.add_argument("--key", type=Path, help="and this private key (PEM)")
    parser.add_argument("manifest", type=Path)
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    context = None
    if args.cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
    web.run_app(
        build_app(manifest), host="127.0.0.1", port=args.port, print=None, ssl_context=context
    )


if __name__ == "__main__":
    main()
