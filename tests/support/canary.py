"""The session-wide secret canary.

Every platform key, bearer token and password the suite uses is registered with ``secret``;
every log line the suite's processes write and every response body its clients read is kept
with ``observe``. At the end of the session ``leaks`` greps all of them for every secret:
one hit anywhere, whatever test produced it, fails the run.
"""

from __future__ import annotations


class Canary:
    def __init__(self) -> None:
        self._secrets: set[bytes] = set()
        self._observed: list[tuple[str, bytes]] = []

    def secret(self, value: str) -> str:
        """Register ``value`` as a secret and hand it back, for use in a constant."""
        self._secrets.add(value.encode("utf-8", "surrogateescape"))
        return value

    def observe(self, where: str, output: str | bytes) -> None:
        """Keep a log line or a response body for the final check."""
        data = output.encode("utf-8", "surrogateescape") if isinstance(output, str) else output
        if data:
            self._observed.append((where, bytes(data)))

    def counts(self) -> tuple[int, int]:
        """How many secrets and outputs the check covers."""
        return len(self._secrets), len(self._observed)

    def leaks(self) -> list[str]:
        """One line per output holding a registered secret (the secret itself not shown)."""
        return [
            f"{where}: contains a secret of {len(value)} bytes"
            for where, data in self._observed
            for value in self._secrets
            if value in data
        ]


SESSION = Canary()
secret = SESSION.secret
observe = SESSION.observe
