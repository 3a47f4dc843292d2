"""A real PostgreSQL server for the test suite, and fixtures that run the
database broker and results tests on SQLite and on PostgreSQL.

Loaded from ``tests/conftest.py`` (``pytest_plugins``).

When collected tests are marked ``postgres``, one server is started for the
session (``initdb`` + ``pg_ctl`` from the Debian binaries, a temporary data
directory, a free loopback port; as the ``postgres`` user when the suite runs
as root, since PostgreSQL refuses to run as root) and registered as the
Django database alias ``"pg"``; pytest-django then creates its test database
there like for ``"default"``. The server is stopped at the end of the session.

Fixtures
--------
postgres_server  (session)  PostgresServer: host, port, user, bindir
db_alias         (function) "default" (SQLite) or "pg", parametrized; each
                 param carries its ``django_db(transaction=True)`` mark.
database_broker  (function) a DatabaseBroker on ``db_alias`` with the default
                 middleware, CurrentMessage and a DatabaseBackend's Results;
                 short heartbeat timeout and poll interval; closed afterwards.
database_backend (function) the broker's DatabaseBackend.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_ALIAS = "pg"
PG_HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((PG_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def find_pg_bindir() -> Path | None:
    """The directory of ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """A throwaway PostgreSQL server in a temporary directory.

    Parameters:
      durable: keep ``fsync``/``synchronous_commit`` on (benchmarks); off by
        default, which is fine for tests and much faster.
    """

    def __init__(self, *, durable: bool = False) -> None:
        bindir = find_pg_bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL server binaries (pg_ctl, initdb) not found on PATH nor under "
                "/usr/lib/postgresql/*/bin; install postgresql or run ./scripts/test.sh."
            )
        self.bindir = bindir
        self.durable = durable
        self.host = PG_HOST
        self.port = _free_port()
        self.user = "postgres"
        self.base = Path(tempfile.mkdtemp(prefix="django_actors_pg_"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            name = "postgres"
            try:
                account = pwd.getpwnam(name)
            except KeyError:
                name = "nobody"
                account = pwd.getpwnam(name)
            os.chown(self.base, account.pw_uid, account.pw_gid)
            self._run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.started = False

    def _pg(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        program = str(self.bindir / args[0])
        return subprocess.run(  # noqa: S603 - fixed binaries, our arguments
            [program, *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base,
            **self._run_as,
        )

    def start(self) -> PostgresServer:
        """Create the cluster and start the server; wait until it accepts connections."""
        self._pg("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-locale", "-N")
        options = [
            f"-p {self.port}",
            f"-c listen_addresses={self.host}",
            f"-k {self.base}",
            "-c max_connections=300",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        try:
            self._pg(
                "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", " ".join(options), "start"
            )
        except subprocess.CalledProcessError as exc:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr}\n{log}") from exc
        self.started = True
        return self

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        if self.started:
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def database_settings(self, name: str = "django_actors") -> dict[str, Any]:
        """A Django ``DATABASES`` entry for a database of this server."""
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": self.user,
            "PASSWORD": "",
            "HOST": self.host,
            "PORT": str(self.port),
        }

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the server accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


_server: PostgresServer | None = None


def _wants_postgres(items: list[pytest.Item]) -> bool:
    return any(item.get_closest_marker("postgres") is not None for item in items)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    # After deselection (-k/-m): start PostgreSQL only when a selected test needs it,
    # and register the alias before pytest-django sets up the test databases.
    global _server
    if _server is not None or not _wants_postgres(items) or find_pg_bindir() is None:
        return
    from django.conf import settings
    from django.db import connections

    _server = PostgresServer().start()
    settings.DATABASES[PG_ALIAS] = _server.database_settings()
    connections.configure_settings(settings.DATABASES)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The session's PostgreSQL server (tests using it must be marked ``postgres``)."""
    if _server is None:
        pytest.fail(
            "No PostgreSQL server: mark the test 'postgres' (and make sure pg_ctl is installed).",
            pytrace=False,
        )
    return _server


DB_PARAMS = [
    pytest.param("default", id="sqlite", marks=pytest.mark.django_db(transaction=True)),
    pytest.param(
        PG_ALIAS,
        id="postgres",
        marks=[pytest.mark.postgres, pytest.mark.django_db(transaction=True, databases=["default", PG_ALIAS])],
    ),
]


@pytest.fixture(params=DB_PARAMS)
def db_alias(request: pytest.FixtureRequest) -> str:
    """The Django database alias under test: SQLite ("default") or PostgreSQL ("pg")."""
    alias: str = request.param
    if alias == PG_ALIAS:
        request.getfixturevalue("postgres_server")
    return alias


@pytest.fixture
def database_backend(db_alias: str) -> Iterator[Any]:
    from django_actors.results.backends.database import DatabaseBackend

    backend = DatabaseBackend(using=db_alias, poll_interval=20)
    yield backend
    backend.close()


@pytest.fixture
def database_broker(db_alias: str, database_backend: Any) -> Iterator[Any]:
    from django_actors import broker as broker_module
    from django_actors.broker import default_middleware, set_broker
    from django_actors.brokers.database import DatabaseBroker
    from django_actors.middleware import CurrentMessage
    from django_actors.results.middleware import Results

    previous = broker_module._broker
    broker = DatabaseBroker(
        middleware=[*default_middleware(), CurrentMessage(), Results(backend=database_backend)],
        using=db_alias,
        heartbeat_timeout=2_000,
        poll_interval=20,
    )
    broker.emit_after("process_boot")
    set_broker(broker)
    yield broker
    broker.emit_before("process_stop")
    broker.close()
    if previous is not None:
        set_broker(previous)
    else:
        broker_module._broker = None
