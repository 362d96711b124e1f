"""The web configuration file: every bad value is one line naming the key; credentials that
passed are remembered so a scrape does not pay a bcrypt round each time."""

import time
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import trustme
import yaml

from exporter.config import ConfigError
from exporter.webconfig import (
    FILE_KEYS,
    BasicAuthCheck,
    WebConfigSource,
    load_web_config,
    parse_web_config,
)

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
SAMPLE = Path(__file__).resolve().parents[2] / "config" / "web.yml"


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "s.crt")
    cert.private_key_pem.write_to_path(tmp_path / "s.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.crt")
    return {"cert_file": "s.crt", "key_file": "s.key"}


BAD = [
    ({"tls": {}}, "tls: unknown key"),
    ({"tls_server_config": {"key_file": None}}, "tls_server_config.key_file: expected a file"),
    ({"tls_server_config": {"min_version": "TLS14"}}, "tls_server_config.min_version: expected"),
    ({"tls_server_config": {"max_version": "TLS11"}}, "tls_server_config.max_version: expected"),
    (
        {"tls_server_config": {"client_auth_type": "RequireAnyClientCert"}},
        "tls_server_config.client_auth_type: expected one of NoClientCert",
    ),
    (
        {"tls_server_config": {"client_auth_type": "RequireAndVerifyClientCert"}},
        "tls_server_config.client_ca_file: required",
    ),
    (
        {"tls_server_config": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
        "tls_server_config.cipher_suites: unknown or TLS 1.3 cipher suite",
    ),
    ({"tls_server_config": {"key_file": "missing.key"}}, "tls_server_config.cert_file/key_file"),
    (
        {"tls_server_config": {"client_ca_file": "s.key"}},
        "tls_server_config.client_ca_file: cannot load",
    ),
    ({"http_server_config": {"headers": {"Server": "x"}}}, "http_server_config.headers.Server"),
    (
        {"http_server_config": {"headers": {"X-Frame-Options": "a\nb"}}},
        "http_server_config.headers.X-Frame-Options: expected a one-line string",
    ),
    ({"basic_auth_users": {"alice": "plaintext"}}, "basic_auth_users.alice: expected a bcrypt"),
    ({"basic_auth_users": {"a:b": HASH}}, "basic_auth_users.a:b: expected a user name"),
    ({"basic_auth_users": ["alice"]}, "basic_auth_users: expected a mapping"),
]


@pytest.mark.parametrize(("document", "message"), BAD)
def test_a_bad_web_config_is_one_line_naming_the_key(
    tmp_path: Path, certs: dict[str, str], document: dict[str, Any], message: str
) -> None:
    if "tls_server_config" in document:
        document = {"tls_server_config": {**certs, **document["tls_server_config"]}}
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as error:
        load_web_config(path)
    text = str(error.value)
    assert "\n" not in text
    assert text.startswith(f"web.config_file: {str(path)!r}: {message}")


def test_a_tls_section_needs_both_certificate_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^tls_server_config\.key_file: required"):
        parse_web_config({"tls_server_config": {"cert_file": "s.crt"}}, tmp_path)


def test_the_sample_file_is_valid_and_documents_every_key(tmp_path: Path) -> None:
    config = parse_web_config(yaml.safe_load(SAMPLE.read_text()), tmp_path)
    assert config.tls is None
    assert config.basic_auth_users == {}
    text = SAMPLE.read_text()
    keys = set(FILE_KEYS)
    assert keys >= {
        "tls_server_config",
        "cert_file",
        "key_file",
        "client_ca_file",
        "client_auth_type",
        "min_version",
        "max_version",
        "cipher_suites",
        "http_server_config",
        "headers",
        "basic_auth_users",
    }
    for key in keys:
        assert f"{key}:" in text


def test_a_rewritten_file_is_picked_up_and_a_broken_one_keeps_the_last_good(
    tmp_path: Path,
) -> None:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({"basic_auth_users": {"alice": HASH}}))
    now = [0.0]
    source = WebConfigSource(path, check_interval_s=1.0, clock=lambda: now[0])
    assert set(source.current().basic_auth_users) == {"alice"}

    path.write_text(yaml.safe_dump({"basic_auth_users": {"bob": HASH}}))
    assert set(source.current().basic_auth_users) == {"alice"}, "checked once per interval"
    now[0] = 1.5
    assert set(source.current().basic_auth_users) == {"bob"}

    path.write_text("basic_auth_users: {bob: nothash}\n")
    now[0] = 3.0
    assert set(source.current().basic_auth_users) == {"bob"}
    assert source.generation == 1


async def test_credentials_that_passed_are_not_checked_by_bcrypt_again() -> None:
    slow = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=12))
    users = {"prometheus": slow}
    check = BasicAuthCheck()
    started = time.perf_counter()
    assert await check.check(users, "prometheus", b"secret")
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        assert await check.check(users, "prometheus", b"secret")
    repeated_s = time.perf_counter() - started
    assert repeated_s < first_s, (first_s, repeated_s)

    assert not await check.check(users, "prometheus", b"wrong")
    assert not await check.check(users, "nobody", b"secret")
    rehashed = {"prometheus": bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4))}
    assert not await check.check(rehashed, "prometheus", b"secret"), "tied to the hash it matched"
