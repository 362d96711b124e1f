"""A primary with a streaming hot standby, and what tests do to its replay."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.pgcluster import EmbeddedPostgres
from tests.support.db import fetch_value
from tests.support.service import poll_until


@dataclass(frozen=True)
class ReplicatedPostgres:
    primary: EmbeddedPostgres
    standby: EmbeddedPostgres
    primary_dsn: str
    standby_dsn: str

    def wait_replayed(self) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        target = fetch_value(self.primary_dsn, "SELECT pg_current_wal_lsn()::text")
        poll_until(
            lambda: fetch_value(
                self.standby_dsn, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            ),
            what="the standby to replay the primary's WAL",
            timeout_s=30,
        )

    def pause_replay(self) -> None:
        fetch_value(self.standby_dsn, "SELECT pg_wal_replay_pause()::text")
        poll_until(
            lambda: (
                fetch_value(self.standby_dsn, "SELECT pg_get_wal_replay_pause_state()") == "paused"
            ),
            what="replay to pause",
        )

    def resume_replay(self) -> None:
        fetch_value(self.standby_dsn, "SELECT pg_wal_replay_resume()::text")
