"""The Prometheus web configuration file (the exporter-toolkit format): TLS, response headers
and basic auth users, read from ``web.config_file`` or ``--web.config.file``.

``load_web_config`` validates a file into a frozen ``WebConfig`` (an error is one line naming
the key); ``WebConfigSource`` holds the current one and re-reads it, with the certificate
files it names, when any of them changes, so that new connections and credentials follow
the files without a restart. A changed file that does not validate is logged and the last
good configuration stays in force.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError
from exporter.logs import log_event

logger = logging.getLogger("exporter.webconfig")

_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# exporter-toolkit's client_auth_type values the ssl module can express. Go's
# RequestClientCert and RequireAnyClientCert accept a certificate without verifying it,
# which OpenSSL through Python cannot do; they are refused rather than silently verified.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's names of the TLS 1.0-1.2 suites the toolkit accepts, as OpenSSL names them. TLS 1.3
# suites are not configurable, in Go as here.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# The response headers exporter-toolkit lets the file set.
_HEADERS = (
    "Strict-Transport-Security",
    "X-Content-Type-Options",
    "X-Frame-Options",
    "X-XSS-Protection",
    "Content-Security-Policy",
)


_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


@dataclass(frozen=True, slots=True)
class TLSServerConfig:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None
    client_auth_type: str
    min_version: str
    max_version: str | None
    cipher_suites: tuple[str, ...]
    prefer_server_cipher_suites: bool

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.cert_file, self.key_file, *filter(None, [self.client_ca_file]))

    def ssl_context(self) -> ssl.SSLContext:
        """A server context; ConfigError naming the key when a file cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[self.min_version]
        if self.max_version is not None:
            context.maximum_version = _VERSIONS[self.max_version]
        if self.cipher_suites:
            context.set_ciphers(":".join(_CIPHER_SUITES[name] for name in self.cipher_suites))
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError(
                f"tls_server_config.cert_file/key_file: cannot load {str(self.cert_file)!r} "
                f"with {str(self.key_file)!r}: {_reason(error)}"
            ) from None
        context.verify_mode = _CLIENT_AUTH[self.client_auth_type]
        if self.client_ca_file is not None:
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as error:
                raise ConfigError(
                    f"tls_server_config.client_ca_file: cannot load "
                    f"{str(self.client_ca_file)!r}: {_reason(error)}"
                ) from None
        return context


def _reason(error: OSError | ssl.SSLError) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or "not a usable certificate or key"
    return error.strerror or type(error).__name__


@dataclass(frozen=True, slots=True)
class WebConfig:
    tls: TLSServerConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def files(self) -> tuple[Path, ...]:
        return self.tls.files if self.tls else ()


class _Invalid(Exception):
    def __init__(self, key: str, expected: str) -> None:
        super().__init__(f"{key}: {expected}")


def _mapping(raw: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _Invalid(key, "expected a mapping")
    for name in raw:
        if name not in allowed:
            raise _Invalid(f"{key}.{name}" if key else str(name), "unknown key")
    return raw


def _path(raw: object, key: str, base_dir: Path) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid(key, "expected a file path")
    return base_dir / raw


def _choice(raw: object, key: str, choices: Mapping[str, object]) -> str:
    if raw not in choices:
        raise _Invalid(key, "expected one of " + ", ".join(choices) + f", got {raw!r}")
    assert isinstance(raw, str)
    return raw


_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)


def _tls(raw: object, base_dir: Path) -> TLSServerConfig | None:
    section = _mapping(raw, "tls_server_config", _TLS_KEYS)
    if not section:
        return None
    key = "tls_server_config."
    for required in ("cert_file", "key_file"):
        if required not in section:
            raise _Invalid(key + required, "required when tls_server_config is set")
    ca = section.get("client_ca_file")
    client_ca = None if ca is None else _path(ca, key + "client_ca_file", base_dir)
    auth = section.get(
        "client_auth_type", "RequireAndVerifyClientCert" if client_ca else "NoClientCert"
    )
    auth = _choice(auth, key + "client_auth_type", _CLIENT_AUTH)
    if auth != "NoClientCert" and client_ca is None:
        raise _Invalid(key + "client_ca_file", f"required with client_auth_type {auth}")
    min_version = _choice(section.get("min_version", "TLS12"), key + "min_version", _VERSIONS)
    max_raw = section.get("max_version")
    max_version = None if max_raw is None else _choice(max_raw, key + "max_version", _VERSIONS)
    if max_version is not None and _VERSIONS[max_version] < _VERSIONS[min_version]:
        raise _Invalid(key + "max_version", f"expected {min_version} (min_version) or newer")
    suites = section.get("cipher_suites", [])
    if not isinstance(suites, list):
        raise _Invalid(key + "cipher_suites", "expected a list of Go cipher suite names")
    for suite in suites:
        if suite not in _CIPHER_SUITES:
            raise _Invalid(key + "cipher_suites", f"unknown or TLS 1.3 cipher suite {suite!r}")
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise _Invalid(key + "prefer_server_cipher_suites", "expected true or false")
    return TLSServerConfig(
        cert_file=_path(section["cert_file"], key + "cert_file", base_dir),
        key_file=_path(section["key_file"], key + "key_file", base_dir),
        client_ca_file=client_ca,
        client_auth_type=auth,
        min_version=min_version,
        max_version=max_version,
        cipher_suites=tuple(suites),
        prefer_server_cipher_suites=prefer,
    )


_HTTP_KEYS = ("headers", "http2")
_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
FILE_KEYS = (*_TOP_KEYS, *_TLS_KEYS, *_HTTP_KEYS, *_HEADERS)
"""Every key the file may hold, the settable response headers included."""


def _headers(raw: object) -> tuple[tuple[str, str], ...]:
    section = _mapping(raw, "http_server_config", _HTTP_KEYS)
    http2 = section.get("http2", True)
    if not isinstance(http2, bool):
        raise _Invalid("http_server_config.http2", "expected true or false")
    headers = _mapping(section.get("headers"), "http_server_config.headers", _HEADERS)
    for name, value in headers.items():
        if not isinstance(value, str) or not value.isprintable():
            raise _Invalid(f"http_server_config.headers.{name}", "expected a one-line string")
    return tuple(headers.items())


def _users(raw: object) -> dict[str, bytes]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _Invalid("basic_auth_users", "expected a mapping of user names to bcrypt hashes")
    users = {}
    for user, hashed in raw.items():
        key = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            raise _Invalid(key, "expected a user name without ':'")
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            raise _Invalid(key, "expected a bcrypt hash ($2a$, $2b$ or $2y$, cost 04..31)")
        users[user] = hashed.encode()
    return users


def parse_web_config(raw: object, base_dir: Path) -> WebConfig:
    """Validate a parsed document; ConfigError with the key on the first problem."""
    try:
        top = _mapping(raw, "", _TOP_KEYS)
        config = WebConfig(
            tls=_tls(top.get("tls_server_config"), base_dir),
            headers=_headers(top.get("http_server_config")),
            basic_auth_users=_users(top.get("basic_auth_users")),
        )
    except _Invalid as invalid:
        raise ConfigError(str(invalid)) from None
    if config.tls is not None:
        config.tls.ssl_context()
    return config


def load_web_config(path: Path) -> WebConfig:
    """Read and validate the file; ConfigError naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"web.config_file: cannot read {str(path)!r}: {error.strerror}") from None
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise ConfigError(f"web.config_file: {str(path)!r} is not valid YAML: {problem}") from None
    try:
        return parse_web_config(raw, path.parent)
    except ConfigError as error:
        raise ConfigError(f"web.config_file: {str(path)!r}: {error}") from None


def _stamp(paths: tuple[Path, ...]) -> tuple[tuple[int, int] | None, ...]:
    stamps: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime_ns, stat.st_size))
    return tuple(stamps)


class WebConfigSource:
    """The web configuration in force, re-read when its file or a file it names changes.

    Files are looked at no more than once per ``check_interval_s``, when the configuration
    is asked for (a new connection, a scrape with credentials), so an idle service does no
    work and a busy one pays one ``stat`` per file per interval.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        check_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._config = load_web_config(path) if path is not None else WebConfig()
        self._context = self._config.tls.ssl_context() if self._config.tls else None
        self._stamps = self._current_stamps()
        self._checked_at = clock()
        self.generation = 0

    def _current_stamps(self) -> tuple[tuple[int, int] | None, ...]:
        if self.path is None:
            return ()
        return _stamp((self.path, *self._config.files))

    @property
    def tls_enabled(self) -> bool:
        return self._context is not None

    def current(self) -> WebConfig:
        """The configuration in force; asked for every answer (its headers), so the check
        whether the files are due a look is kept to one comparison."""
        if self.path is not None and self._clock() - self._checked_at >= self._check_interval_s:
            self._reload_if_changed()
        return self._config

    def ssl_context(self) -> ssl.SSLContext:
        self.current()
        assert self._context is not None, "asked for TLS only when the file enables it"
        return self._context

    def _reload_if_changed(self) -> None:
        assert self.path is not None, "only a configuration read from a file changes"
        self._checked_at = self._clock()
        stamps = self._current_stamps()
        if stamps == self._stamps:
            return
        self._stamps = stamps
        try:
            config = load_web_config(self.path)
            if (config.tls is None) != (self._config.tls is None):
                raise ConfigError(
                    "web.config_file: tls_server_config: turning TLS on or off needs a restart"
                )
            context = config.tls.ssl_context() if config.tls else None
        except ConfigError as error:
            log_event(logger, logging.WARNING, "web_config_rejected", error=str(error))
            return
        self._config, self._context = config, context
        self._stamps = self._current_stamps()
        self.generation += 1
        log_event(logger, logging.INFO, "web_config_reloaded", generation=self.generation)


class BasicAuthCheck:
    """Checks ``user:password`` against the configured bcrypt hashes and remembers the pairs
    that passed, so that a scraper sending the same credentials every 15 s pays one bcrypt
    round, not one per scrape. Only a digest of the pair is kept, tied to the hash it
    matched: a changed hash or a removed user is checked afresh. Failures are not kept.
    bcrypt runs in a worker thread, off the event loop."""

    MAX_REMEMBERED = 1024

    def __init__(self) -> None:
        self._passed: set[tuple[str, bytes, bytes]] = set()

    async def check(self, users: Mapping[str, bytes], user: str, password: bytes) -> bool:
        hashed = users.get(user)
        if hashed is None:
            return False
        remembered = (user, hashed, hashlib.sha256(password).digest())
        if remembered in self._passed:
            return True
        if not await asyncio.to_thread(bcrypt.checkpw, password, hashed):
            return False
        if len(self._passed) >= self.MAX_REMEMBERED:
            self._passed.clear()
        self._passed.add(remembered)
        return True
