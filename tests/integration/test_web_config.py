"""TLS and basic auth by the Prometheus web configuration file, on the real service.

Certificates are made by trustme for each test; clients are Python's ssl module and aiohttp.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import trustme
import yaml

from exporter.api import REFRESHER
from exporter.app import create_app
from exporter.edge import serving
from tests.support import canary
from tests.support.service import make_settings, wait_until

PASSWORD = canary.secret("scrape-password-" + "p" * 16)
NEW_PASSWORD = canary.secret("rotated-password-" + "q" * 16)


# trustme issues ECDSA keys.
ECDSA_AES256 = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@dataclass
class Pki:
    ca: trustme.CA
    directory: Path

    def server_files(self, name: str = "server") -> dict[str, str]:
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.cert_chain_pems[0].write_to_path(self.directory / f"{name}.crt")
        cert.private_key_pem.write_to_path(self.directory / f"{name}.key")
        return {"cert_file": f"{name}.crt", "key_file": f"{name}.key"}

    def client_context(self, *, client_cert: bool = False, **bounds: Any) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        for name, value in bounds.items():
            if name == "ciphers":
                context.set_ciphers(value)
            else:
                setattr(context, name, value)
        if client_cert:
            self.ca.issue_cert("scraper@example.org").configure_cert(context)
        return context


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(trustme.CA(), tmp_path)
    pki.ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    return pki


@dataclass
class Served:
    base: str
    web_config: Path

    def rewrite(self, document: dict[str, Any]) -> None:
        self.web_config.write_text(yaml.safe_dump(document))


ServeFactory = Callable[[dict[str, Any]], Any]


@pytest.fixture
async def serve(fleet_db: Any, tmp_path: Path) -> AsyncIterator[ServeFactory]:
    """Start the service with the given web configuration document; stopped at the end."""
    stack: list[Any] = []

    async def start(document: dict[str, Any]) -> Served:
        path = tmp_path / "web.yml"
        path.write_text(yaml.safe_dump(document))
        settings = make_settings(fleet_db.dsn, web={"config_file": str(path)})
        app = create_app(settings)
        context = serving(app, settings, shutdown_timeout_s=1.0)
        site = await context.__aenter__()
        stack.append(context)
        assert await app[REFRESHER].refresh_once()
        scheme = "https" if "tls_server_config" in document else "http"
        return Served(f"{scheme}://127.0.0.1:{site.port}", path)

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def _get(
    url: str, context: ssl.SSLContext | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=context if context is not None else False, headers=headers) as answer,
    ):
        body = await answer.read()
    canary.observe(f"GET {url}", body)
    return answer.status, dict(answer.headers), body


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_tls_serves_with_the_configured_certificate_and_headers(
    serve: ServeFactory, pki: Pki
) -> None:
    served = await serve(
        {
            "tls_server_config": pki.server_files(),
            "http_server_config": {
                "headers": {"Strict-Transport-Security": "max-age=31536000"},
            },
        }
    )
    status, headers, _ = await _get(f"{served.base}/healthz", pki.client_context())
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    status, headers, _ = await _get(f"{served.base}/nowhere", pki.client_context())
    assert status == 404
    assert headers["Strict-Transport-Security"] == "max-age=31536000"

    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(f"{served.base}/healthz", ssl.create_default_context())


@pytest.mark.parametrize(
    ("server_bounds", "client_bounds", "works"),
    [
        ({"min_version": "TLS13"}, {"maximum_version": ssl.TLSVersion.TLSv1_2}, False),
        ({"min_version": "TLS13"}, {"minimum_version": ssl.TLSVersion.TLSv1_3}, True),
        ({"max_version": "TLS12"}, {"minimum_version": ssl.TLSVersion.TLSv1_3}, False),
        ({"max_version": "TLS12"}, {"maximum_version": ssl.TLSVersion.TLSv1_2}, True),
        (
            {"max_version": "TLS12", "cipher_suites": [ECDSA_AES256]},
            {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-ECDSA-AES256-GCM-SHA384"},
            True,
        ),
        (
            {"max_version": "TLS12", "cipher_suites": [ECDSA_AES256]},
            {"maximum_version": ssl.TLSVersion.TLSv1_2, "ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256"},
            False,
        ),
    ],
    ids=[
        "1.3-only refuses 1.2",
        "1.3-only serves 1.3",
        "1.2-max refuses 1.3",
        "1.2",
        "configured cipher",
        "other cipher",
    ],
)
async def test_tls_version_bounds_hold(
    serve: ServeFactory,
    pki: Pki,
    server_bounds: dict[str, Any],
    client_bounds: dict[str, Any],
    works: bool,
) -> None:
    served = await serve({"tls_server_config": {**pki.server_files(), **server_bounds}})
    client = pki.client_context(**client_bounds)
    if works:
        assert (await _get(f"{served.base}/healthz", client))[0] == 200
    else:
        with pytest.raises(aiohttp.ClientConnectorError):
            await _get(f"{served.base}/healthz", client)
    # A failed handshake leaves the service answering.
    assert (await _get(f"{served.base}/healthz", pki.client_context()))[0] == 200


async def test_a_client_certificate_is_required_and_one_without_is_refused(
    serve: ServeFactory, pki: Pki
) -> None:
    served = await serve(
        {
            "tls_server_config": {
                **pki.server_files(),
                "client_ca_file": "ca.crt",
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        }
    )
    status, _, _ = await _get(f"{served.base}/healthz", pki.client_context(client_cert=True))
    assert status == 200
    with pytest.raises(aiohttp.ClientError):
        await _get(f"{served.base}/healthz", pki.client_context())
    other_ca = Pki(trustme.CA(), pki.directory)
    stranger = pki.client_context()
    other_ca.ca.issue_cert("stranger@example.org").configure_cert(stranger)
    with pytest.raises(aiohttp.ClientError):
        await _get(f"{served.base}/healthz", stranger)


async def test_basic_auth_guards_the_scrape_endpoint(serve: ServeFactory) -> None:
    served = await serve({"basic_auth_users": {"prometheus": _hash(PASSWORD)}})
    url = f"{served.base}/prometheus"
    assert (await _get(url, Authorization=_basic("prometheus", PASSWORD)))[0] == 200
    assert (await _get(url, Authorization=_basic("PROMETHEUS", PASSWORD)))[0] == 401
    for authorization in (
        _basic("prometheus", "wrong"),
        _basic("nobody", PASSWORD),
        "Basic not-base64!",
        "Bearer " + PASSWORD,
    ):
        status, headers, body = await _get(url, Authorization=authorization)
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Basic realm="metrics"'
        assert b"UNAUTHORIZED" in body
    status, _, _ = await _get(url)
    assert status == 401
    assert (await _get(f"{served.base}/healthz"))[0] == 200


async def test_basic_auth_files_are_reloaded_without_a_restart(serve: ServeFactory) -> None:
    served = await serve({"basic_auth_users": {"prometheus": _hash(PASSWORD)}})
    url = f"{served.base}/prometheus"
    assert (await _get(url, Authorization=_basic("prometheus", PASSWORD)))[0] == 200

    served.rewrite({"basic_auth_users": {"prometheus": _hash(NEW_PASSWORD)}})

    async def new_password_works() -> bool:
        answer = await _get(url, Authorization=_basic("prometheus", NEW_PASSWORD))
        return answer[0] == 200

    await wait_until(new_password_works, what="the rewritten web config to be in force")
    assert (await _get(url, Authorization=_basic("prometheus", PASSWORD)))[0] == 401

    served.web_config.write_text("basic_auth_users: [not, a, mapping]\n")
    await asyncio.sleep(0)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert (await _get(url, Authorization=_basic("prometheus", NEW_PASSWORD)))[0] == 200
        await asyncio.sleep(0.25)


async def test_a_changed_certificate_is_served_to_new_connections(
    serve: ServeFactory, pki: Pki
) -> None:
    served = await serve({"tls_server_config": pki.server_files()})
    assert (await _get(f"{served.base}/healthz", pki.client_context()))[0] == 200

    rotated = Pki(trustme.CA(), pki.directory)
    rotated.server_files()

    async def rotated_cert_served() -> bool:
        try:
            return (await _get(f"{served.base}/healthz", rotated.client_context()))[0] == 200
        except aiohttp.ClientConnectorCertificateError:
            return False

    await wait_until(rotated_cert_served, what="the rotated certificate to be served")
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await _get(f"{served.base}/healthz", pki.client_context())
