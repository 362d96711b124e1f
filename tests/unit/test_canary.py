"""The secret canary itself: it must find a secret wherever it was written."""

from tests.support.canary import Canary


def test_canary_finds_a_secret_in_any_output_and_names_only_where() -> None:
    canary = Canary()
    key = canary.secret("pk-sept-canary-" + "c" * 20)
    canary.observe("log", "2026-01-01 info exporter.http request_rejected kind=X")
    canary.observe("GET /status", b'{"error": {"code": "BAD_REQUEST"}}')
    assert canary.leaks() == []

    canary.observe("log of aiohttp.server", f"error handling b'X-Platform-Key: {key}\\x00'")
    canary.observe("GET /x", key.encode()[:-1])

    [leak] = canary.leaks()
    assert leak.startswith("log of aiohttp.server:")
    assert key not in leak
    assert canary.counts() == (1, 4)
