"""Which product a platform key belongs to, in the snapshot an answer is served from.

A key is found by its SHA-256 among the key hashes the last refresh loaded: unknown keys
never reach the database. That hash is the largest single cost of a ``/status`` or
``/metrics`` answer beyond aiohttp's own work (about 6k instructions through OpenSSL, of some
230k per request), so a key that matched is remembered for that one snapshot, and the next
request with it is a dictionary lookup:

* only a key whose hash is a product's is remembered, so at most one per product; a key that
  failed is never kept, so no client can grow the memo;
* a new snapshot starts with an empty memo: a rotated or removed key stops working with the
  refresh that drops it, exactly as if nothing were remembered;
* the lookup compares a request's key with remembered ones only when their string hashes
  (keyed per process) are equal, so its timing tells nothing about a key's characters;
* remembered keys live in this process's memory alone, as the requests that carried them do;
  they are never logged, rendered or written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from exporter.domain import FleetSnapshot, ProductFleet
from exporter.errors import ApiError, invalid_platform_key

#: The longest header value the edge lets through; a longer key never reaches a handler.
MAX_PLATFORM_KEY_LENGTH = 8192


class PlatformKeys:
    """The caller's fleet by platform key, with the memo of keys that matched (module doc)."""

    __slots__ = ("_fleets", "_snapshot")

    def __init__(self) -> None:
        self._snapshot: FleetSnapshot | None = None
        self._fleets: dict[str, ProductFleet] = {}

    def fleet(self, keys: Sequence[str], snapshot: FleetSnapshot | None) -> ProductFleet:
        """The fleet, in ``snapshot``, of the product whose key was sent; ``keys`` are the
        values of every ``X-Platform-Key`` header of the request (more than one is refused:
        ambiguous credentials)."""
        if len(keys) != 1:
            raise invalid_platform_key()
        key = keys[0]
        if snapshot is self._snapshot:
            remembered = self._fleets.get(key)
            if remembered is not None:
                return remembered
        if not key or len(key) > MAX_PLATFORM_KEY_LENGTH:
            raise invalid_platform_key()
        if snapshot is None:
            raise ApiError(
                503,
                "FLEET_DATA_UNAVAILABLE",
                "Platform keys are not loaded yet: the first refresh has not succeeded.",
            )
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        product = snapshot.products_by_key_hash.get(digest)
        if product is None or not hmac.compare_digest(product.api_key_hash, digest):
            raise invalid_platform_key()
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._fleets = {}
        fleet = snapshot.fleets[product.product_id]
        self._fleets[key] = fleet
        return fleet

    @property
    def remembered(self) -> int:
        """How many keys are remembered for the current snapshot."""
        return len(self._fleets)
