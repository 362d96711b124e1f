"""The benchmark's one table, and the record of where and how it was measured.

``render_table`` turns rows into a Markdown table; ``environment`` reads the machine from
``/proc`` and the versions of what was measured; ``append_results`` adds a dated section to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


@dataclass(frozen=True)
class Row:
    scale: str
    measure: str
    ours: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None


HEADER = ("scale", "measure", "engine-fleet-exporter", "reference", "ratio", "target", "met")


def render_table(rows: list[Row]) -> str:
    cells = [HEADER] + [
        (
            r.scale,
            r.measure,
            r.ours,
            r.reference,
            r.ratio,
            r.target,
            "" if r.met is None else ("yes" if r.met else "**NO**"),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _proc_field(path: str, name: str) -> str:
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return "unknown"


def machine() -> str:
    cores = sum(
        1 for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("processor")
    )
    model = _proc_field("/proc/cpuinfo", "model name")
    mem_kb = int(_proc_field("/proc/meminfo", "MemTotal").split()[0])
    return f"{cores} cores ({model}), {mem_kb / 1024 / 1024:.1f} GiB memory, {platform.system()}"


def load_average() -> str:
    """The 1-minute load average, as ``/proc/loadavg`` gives it."""
    return Path("/proc/loadavg").read_text().split()[0]


def machine_load_text(before: str, after: str) -> str:
    cores = os.cpu_count() or 1
    text = f"1-minute load average {before} before, {after} after, on {cores} cores"
    if max(float(before), float(after)) > cores:
        text += " (above the core count, other work shared them)"
    return text


def append_results(title: str, details: list[tuple[str, str]], table: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by `make bench`; newest last.\n")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["", f"## {stamp} — {title}", ""]
    lines += [f"* {name}: {value}" for name, value in details]
    lines += ["", table, ""]
    with RESULTS.open("a", encoding="utf-8") as results:
        results.write("\n".join(lines))
