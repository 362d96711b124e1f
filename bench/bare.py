"""The baseline: a bare aiohttp server that answers each path with fixed bytes.

It runs as its own process, like the exporter, and serves exactly the bodies (and content
types) the exporter served, so the throughput ratio measures what the exporter adds on top of
aiohttp itself. Usage: ``python -m bench.bare --port N MANIFEST.json`` where the manifest maps
paths to ``{"file": ..., "content_type": ...}``.
"""

from __future__ import annotations

import argparse
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _fixed(body: bytes, content_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handler


def build_app(manifest: dict[str, dict[str, str]]) -> web.Application:
    app = web.Application()
    for path, entry in manifest.items():
        app.router.add_get(path, _fixed(Path(entry["file"]).read_bytes(), entry["content_type"]))
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
