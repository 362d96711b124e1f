"""The checkpoint: the audit counting state kept across restarts, trusted only when it
provably belongs to the same data.

A checkpoint holds the tally, the id tracker (high-water id, gaps with their fences) and the
backfill plan, together with what identifies the data they were counted from: the cluster's
``system_identifier`` and timeline, the database and ``audit_log`` OIDs, a fingerprint of the
high-water row, and the settings that shape the counts (``actions.*``, ``metrics.*``). On start
``rejection`` compares that with what the database says now; any difference, or a file that
does not decode, rejects the checkpoint (the caller logs one line and counts from scratch).
Encoding, decoding and the comparison are pure; ``write_atomically`` and ``read_file`` are the
only file I/O.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporter.config import Settings

FORMAT = "engine-fleet-exporter/audit-checkpoint"
VERSION = 2
"""2: the backfill counts newest first (its plan saves ``next_hi``; version 1 saved ``next_lo``)."""


class CheckpointDamaged(ValueError):
    """The file is not a checkpoint this version can read; the message says why."""


@dataclass(frozen=True, slots=True)
class DataIdentity:
    """What the database says about the data a high-water id belongs to."""

    system_identifier: str
    timeline: int
    database_oid: int
    audit_log_oid: int
    high_water: int
    high_water_fingerprint: str | None
    """Digest of the high-water row's columns; ``None`` when no such row exists."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    identity: DataIdentity
    counting: Mapping[str, Any]
    tracker: Mapping[str, Any]
    tally: Mapping[str, Any]
    backfill: Mapping[str, Any] | None


def counting_settings(settings: Settings) -> dict[str, Any]:
    """The settings that shape the counts: a checkpoint counted with others is useless."""
    return {
        "actions": {
            "provision": list(settings.actions.provision),
            "destroy": list(settings.actions.destroy),
            "crash": list(settings.actions.crash),
            "restart": list(settings.actions.restart),
        },
        "metrics": {
            "boot_sample_size": settings.metrics.boot_sample_size,
            "boot_buckets_s": list(settings.metrics.boot_buckets_s),
        },
    }


def encode(checkpoint: Checkpoint) -> bytes:
    document = {
        "format": FORMAT,
        "version": VERSION,
        "identity": asdict(checkpoint.identity),
        "counting": checkpoint.counting,
        "tracker": checkpoint.tracker,
        "tally": checkpoint.tally,
        "backfill": checkpoint.backfill,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def decode(data: bytes) -> Checkpoint:
    """The checkpoint in ``data``; ``CheckpointDamaged`` for anything else."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointDamaged(f"not JSON ({error})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointDamaged("not an audit checkpoint")
    if document.get("version") != VERSION:
        raise CheckpointDamaged(f"version {document.get('version')!r}, expected {VERSION}")
    try:
        identity = DataIdentity(**document["identity"])
        checkpoint = Checkpoint(
            identity=identity,
            counting=document["counting"],
            tracker=document["tracker"],
            tally=document["tally"],
            backfill=document["backfill"],
        )
    except (KeyError, TypeError) as error:
        raise CheckpointDamaged(f"incomplete ({error})") from None
    if not all(isinstance(part, dict) for part in (checkpoint.tracker, checkpoint.tally)):
        raise CheckpointDamaged("incomplete (tracker or tally is not a mapping)")
    return checkpoint


def rejection(saved: Checkpoint, current: DataIdentity, counting: Mapping[str, Any]) -> str | None:
    """Why ``saved`` must not be used on the data ``current`` describes, or ``None``.

    ``current`` is read for the saved high-water id: its fingerprint must be that row's."""
    was = saved.identity
    if current.system_identifier != was.system_identifier:
        return "other_cluster"
    if current.timeline != was.timeline:
        return "other_timeline"
    if current.database_oid != was.database_oid:
        return "other_database"
    if current.audit_log_oid != was.audit_log_oid:
        return "other_audit_log_table"
    if was.high_water and current.high_water_fingerprint is None:
        return "high_water_row_missing"
    if current.high_water_fingerprint != was.high_water_fingerprint:
        return "high_water_row_changed"
    if dict(counting) != dict(saved.counting):
        return "counting_settings_changed"
    return None


def read_file(path: Path) -> bytes | None:
    """The file's bytes; ``None`` when there is none. Other read errors propagate."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one:
    a temporary file beside it, flushed to disk, renamed over it, and the rename flushed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
