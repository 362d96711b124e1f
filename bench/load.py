"""Bounded HTTP load on loopback: ``wrk`` when it is there, a small aiohttp client loop if not.

Every run is bounded by a duration and a connection count, and reports requests per second,
p50/p99 latency and how many answers were not 2xx. Both tools are used the same way for the
service and for the baselines it is compared with, so ratios stay fair whichever one ran.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

WRK_TIMEOUT_S = 5


@dataclass(frozen=True)
class LoadResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int


def ensure_wrk() -> str | None:
    """The wrk binary, installed through apt when running as root and missing; None if absent."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=environment, capture_output=True, check=False).returncode:
        subprocess.run(
            ["apt-get", "update", "-q"], env=environment, capture_output=True, check=False
        )
        subprocess.run(install, env=environment, capture_output=True, check=False)
    return shutil.which("wrk")


def tool_name(wrk: str | None) -> str:
    if wrk is None:
        return "python aiohttp client loop"
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
    first = (result.stdout + result.stderr).strip().splitlines()
    return first[0].split(" [")[0] if first else "wrk"


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> LoadResult:
    percentiles = {
        int(m.group(1)): _duration_ms(m.group(2))
        for m in re.finditer(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", output, re.MULTILINE)
    }
    requests = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if requests is None or rps is None or 50 not in percentiles or 99 not in percentiles:
        raise ValueError(f"could not read wrk output:\n{output}")
    return LoadResult(
        requests=int(requests.group(1)),
        rps=float(rps.group(1)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_load(
    wrk: str | None,
    url: str,
    *,
    seconds: float,
    connections: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Load ``url`` for ``seconds`` with ``connections`` keep-alive connections."""
    headers = headers or {}
    if wrk is None:
        return asyncio.run(_python_load(url, seconds, connections, headers))
    command = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
    ]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    result = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    return parse_wrk(result.stdout)


async def _python_load(
    url: str, seconds: float, connections: int, headers: dict[str, str]
) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    counts = {"non_2xx": 0, "errors": 0}
    deadline = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        counts["non_2xx"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
                continue
            latencies.append((time.perf_counter() - started) * 1000)

    timeout = aiohttp.ClientTimeout(total=WRK_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=connections)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(connections)))
    elapsed = time.monotonic() - started
    latencies.sort()
    if not latencies:
        return LoadResult(0, 0.0, 0.0, 0.0, counts["non_2xx"], counts["errors"])
    return LoadResult(
        requests=len(latencies),
        rps=len(latencies) / elapsed,
        p50_ms=latencies[len(latencies) // 2],
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        non_2xx=counts["non_2xx"],
        errors=counts["errors"],
    )
