"""A throwaway PostgreSQL cluster for the tests, the benchmarks and ``fleet-exporter demo``.

It uses the machine's PostgreSQL binaries, listens on a free loopback port, keeps its data
in a temporary directory and is always removed: on ``cleanup``, on leaving the ``with``
block, and at interpreter exit for any cluster still alive. Only a cluster given its own
directory (``kept_in``, for benchmark data too slow to generate twice) outlives its use:
it is stopped, and started again on that data the next time. As root, the server binaries
run as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg2
from psycopg2 import sql

from exporter.loopback import free_port
from exporter.sqlfiles import recommended_indexes, sql_file

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package"
    " 'postgresql' (apt-get install postgresql) or put initdb and pg_ctl on PATH"
)
_START_ATTEMPTS = 3
_LIVE: set[EmbeddedPostgres] = set()


class PostgresNotFound(RuntimeError):
    pass


def _has_server(directory: Path) -> bool:
    return (directory / "initdb").is_file() and (directory / "pg_ctl").is_file()


def find_postgres_bindir() -> Path:
    """Where initdb and pg_ctl live: PATH, then ``pg_config --bindir``, then Debian's layout."""
    initdb = shutil.which("initdb")
    if initdb and _has_server(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        candidate = Path(result.stdout.strip())
        if result.returncode == 0 and _has_server(candidate):
            return candidate
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for candidate in versions:
        if _has_server(candidate):
            return candidate
    raise PostgresNotFound(INSTALL_HINT)


class EmbeddedPostgres:
    """A throwaway cluster on a free loopback port in a temp dir, always removed."""

    user = "postgres"
    host = "127.0.0.1"

    def __init__(
        self,
        *,
        port: int | None = None,
        durable: bool = False,
        standby_of: EmbeddedPostgres | None = None,
        kept_in: Path | None = None,
    ) -> None:
        """``standby_of``: a streaming hot standby of that running cluster, made from a base
        backup of it (``pg_basebackup -R``) instead of ``initdb``. ``kept_in``: the cluster
        lives in that directory (created on first use) and is never removed."""
        self.port = port or free_port()
        self._primary = standby_of
        self._fixed_port = port is not None
        self._durable = durable
        self._bindir = find_postgres_bindir()
        self._kept_in = kept_in
        self._root: Path | None = None
        self._running = False

    @property
    def data_dir(self) -> Path:
        assert self._root is not None
        return self._root / "data"

    def _as_server_user(self, command: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *command]
        return command

    def _run(self, *args: str) -> None:
        command = self._as_server_user([str(self._bindir / args[0]), *args[1:]])
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-800:]}"
                f"{self._log_tail()}"
            )

    def _log_tail(self) -> str:
        if self._root is None:
            return ""
        log = self._root / "server.log"
        with contextlib.suppress(OSError):
            return "\nserver log:\n" + log.read_text(errors="replace")[-1500:]
        return ""

    def _initdb(self) -> None:
        if self._kept_in is None:
            self._root = Path(tempfile.mkdtemp(prefix="fleetpg-"))
        else:
            self._root = self._kept_in.resolve()
            self._root.mkdir(parents=True, exist_ok=True)
            if (self.data_dir / "PG_VERSION").is_file():
                return
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self._root, account.pw_uid, account.pw_gid)
        if self._kept_in is None:
            _LIVE.add(self)
        if self._primary is not None:
            self._run(
                "pg_basebackup",
                "-h",
                self._primary.host,
                "-p",
                str(self._primary.port),
                "-U",
                self._primary.user,
                "-D",
                str(self.data_dir),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            )
            return
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "-A",
            "trust",
            "--encoding",
            "UTF8",
            "--no-sync",
        )

    def _server_options(self) -> str:
        assert self._root is not None
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-p {self.port}",
            f"-c unix_socket_directories={self._root}",
            "-c max_connections=200",
            "-c hot_standby=on",
        ]
        if self._has_pg_stat_statements():
            options.append("-c shared_preload_libraries=pg_stat_statements")
        if not self._durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        return " ".join(options)

    def _has_pg_stat_statements(self) -> bool:
        pg_config = self._bindir / "pg_config"
        if not pg_config.is_file():
            return False
        result = subprocess.run(
            [str(pg_config), "--pkglibdir"], capture_output=True, text=True, check=False
        )
        return (Path(result.stdout.strip()) / "pg_stat_statements.so").is_file()

    def start(self) -> None:
        """Create the cluster on first use; later calls restart it on the same port."""
        if self._running:
            return
        if self._root is None:
            self._initdb()
        assert self._root is not None
        for attempt in range(_START_ATTEMPTS):
            try:
                self._run(
                    "pg_ctl",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self._root / "server.log"),
                    "-o",
                    self._server_options(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                )
                break
            except RuntimeError:
                if self._fixed_port or attempt == _START_ATTEMPTS - 1:
                    raise
                self.port = free_port()
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        if not self._running or self._root is None:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")
        self._running = False

    def cleanup(self) -> None:
        """Stop the server (immediately if a clean stop fails) and remove its directory,
        unless it was given one to be kept in."""
        if self._root is None:
            return
        try:
            self.stop()
        except RuntimeError:
            with contextlib.suppress(RuntimeError):
                self.stop(mode="immediate")
        if self._kept_in is None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root = None
        self._running = False
        _LIVE.discard(self)

    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.cleanup()

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={dbname}"

    def create_database(self, name: str) -> str:
        connection = psycopg2.connect(self.dsn())
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            connection.close()
        return self.dsn(name)


def apply_schema(dsn: str, *, indexes: bool = True) -> None:
    """Create the orchestrator's tables and, optionally, the exporter's recommended indexes."""
    connection = psycopg2.connect(dsn)
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(sql_file("schema.sql"))
        connection.autocommit = True
        with connection.cursor() as cursor:
            if indexes:
                for index in recommended_indexes():
                    cursor.execute(index.sql)
            cursor.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'"
                " AND current_setting('shared_preload_libraries') LIKE '%%pg_stat_statements%%'"
            )
            if cursor.fetchone():
                cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        connection.close()


@atexit.register
def _cleanup_leftovers() -> None:
    for server in list(_LIVE):
        server.cleanup()
