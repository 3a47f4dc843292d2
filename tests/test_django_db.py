"""DbConnections: database connection hygiene in worker threads, on a real SQLite file."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections
from django.test import override_settings

import django_actors
from django_actors.brokers.stub import StubBroker
from django_actors.conf import build_middleware
from django_actors.middleware.django_db import DbConnections
from django_actors.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)

seen: list[dict[str, Any]] = []


@django_actors.actor(actor_name="db_query")
def query(count: int) -> None:
    wrapper = connections["default"]
    queries_at_start = len(wrapper.queries_log)
    for _ in range(count):
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
    seen.append({"wrapper": wrapper, "raw": wrapper.connection, "queries_at_start": queries_at_start})


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what}.")
        time.sleep(0.01)


@pytest.fixture
def run() -> Iterator[Callable[..., Worker]]:
    """Start a one-thread worker on the default-middleware stub broker; stop it after the test."""
    seen.clear()
    workers: list[Worker] = []

    def start() -> Worker:
        broker = StubBroker(middleware=build_middleware())  # the default middleware
        assert isinstance(broker.middleware[0], DbConnections)
        query.broker = broker
        worker = Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=5000)
        worker.broker.close()
    query.explicit_broker = None


def process(worker: Worker, *counts: int) -> None:
    before = len(seen)
    for count in counts:
        query.send(count)
    worker.broker.join("default", timeout=10_000)
    wait_for(lambda: len(seen) == before + len(counts), "the messages to run")


def test_with_conn_max_age_0_each_message_closes_its_connection(
    run: Callable[[], Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    worker = run()
    process(worker, 1)
    wrapper = seen[0]["wrapper"]
    assert seen[0]["raw"] is not None
    # Closed once the message was settled, while the worker thread lives on.
    wait_for(lambda: wrapper.connection is None, "the connection to be closed")
    assert worker.workers[0].is_alive()
    process(worker, 1)
    assert seen[1]["wrapper"] is wrapper
    assert seen[1]["raw"] is not seen[0]["raw"]


def test_persistent_connections_are_reused_and_closed_when_the_thread_stops(
    run: Callable[[], Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    worker = run()
    process(worker, 1, 1)
    wrapper = seen[0]["wrapper"]
    assert seen[0]["raw"] is seen[1]["raw"]  # CONN_MAX_AGE=None keeps it open
    assert wrapper.connection is not None
    worker.stop(timeout=5000)
    assert not worker.workers[0].is_alive()
    assert wrapper.connection is None


@override_settings(DEBUG=True)
def test_the_query_log_is_reset_before_each_message(
    run: Callable[[], Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", None)
    worker = run()
    process(worker, 3, 3)
    wrapper = seen[0]["wrapper"]
    assert seen[0]["queries_at_start"] == 0
    assert seen[1]["queries_at_start"] == 0  # the first message's 3 queries were cleared
    assert len(wrapper.queries_log) >= 3
