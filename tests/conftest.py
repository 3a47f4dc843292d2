"""Shared fixtures: a real redis-server for the whole session.

Fixtures
--------
redis_server  (session)  RedisServer: host, port, url ("redis://127.0.0.1:PORT/0")
redis_client  (function) redis.Redis connected to db 0, flushed before and after the test
redis_url     (function) str, the URL of an empty db 0 (flushed before and after the test)

redis-server is started by pytest-redis on a free loopback port the first time
a test asks for one of these fixtures. When redis-server is not installed,
those tests and every test marked ``redis`` error out with a clear message:
they are never skipped silently.

This module must not import django_actors at import time.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_redis import factories
from pytest_redis.executor import RedisExecutor

pytest_plugins = ["tests.conftest_pg"]

REDIS_HOST = "127.0.0.1"


def _free_port(host: str = REDIS_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _redis_server_executable() -> str | None:
    return os.environ.get("REDIS_SERVER") or shutil.which("redis-server")


def _pg_ctl_executable() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return str(candidates[-1]) if candidates else None


REDIS_MISSING = (
    "redis-server was not found on PATH (nor in $REDIS_SERVER). Tests that need Redis "
    "start a real redis-server; install it (Debian: apt-get install redis-server) or "
    "run ./scripts/test.sh, which installs it."
)
PG_MISSING = (
    "PostgreSQL server binaries (pg_ctl) were not found on PATH nor under "
    "/usr/lib/postgresql/*/bin. Install them (Debian: apt-get install postgresql) or "
    "run ./scripts/test.sh, which installs them and puts them on PATH."
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Error (not skip) when a marked test cannot get the service it needs.
    if item.get_closest_marker("redis") is not None and _redis_server_executable() is None:
        pytest.fail(REDIS_MISSING, pytrace=False)
    if item.get_closest_marker("postgres") is not None and _pg_ctl_executable() is None:
        pytest.fail(PG_MISSING, pytrace=False)


# The port is chosen once per test process (pytest-xdist workers each get their own).
redis_server_proc = factories.redis_proc(
    executable=_redis_server_executable() or "redis-server",
    host=REDIS_HOST,
    port=_free_port(),
)
_redis_client_fixture = factories.redisdb("redis_server_proc", dbnum=0)


@dataclass(frozen=True, kw_only=True)
class RedisServer:
    """Where the session's redis-server listens."""

    host: str
    port: int
    unixsocket: str | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    if _redis_server_executable() is None:
        pytest.fail(REDIS_MISSING, pytrace=False)
    proc: RedisExecutor = request.getfixturevalue("redis_server_proc")
    return RedisServer(host=proc.host, port=proc.port, unixsocket=proc.unixsocket)


@pytest.fixture
def redis_client(redis_server: RedisServer, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    # pytest-redis's client flushes after the test; flush before it too, so a
    # test never sees keys left by a background thread of an earlier one.
    client: redis.Redis = request.getfixturevalue("_redis_client_fixture")
    client.flushall()
    yield client


@pytest.fixture
def redis_url(redis_server: RedisServer, redis_client: redis.Redis) -> str:
    return redis_server.url


@pytest.fixture
def worker(broker: Any) -> Iterator[Any]:
    """A started Worker (2 threads, 50 ms fetch timeout) on the test module's
    own ``broker`` fixture; stopped after the test."""
    from django_actors import Worker

    started = Worker(broker, worker_timeout=50, worker_threads=2)
    started.start()
    yield started
    started.stop(timeout=5000)
