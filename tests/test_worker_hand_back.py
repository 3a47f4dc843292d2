"""A hook that loses its connection must not make the worker ack (and lose) work."""

from __future__ import annotations

import threading
from typing import Any

import django_actors
from django_actors.broker import default_middleware
from django_actors.brokers.stub import StubBroker
from django_actors.errors import ConnectionClosed
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend
from django_actors.worker import Worker


class FlakyBackend(StubBackend):
    """A real StubBackend whose first ``failures`` stores fail as if the server went away."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.lock = threading.Lock()

    def _store_many(self, records: Any, ttl: int) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise ConnectionClosed("results backend unreachable")
        super()._store_many(records, ttl)


def _broker(backend: StubBackend) -> StubBroker:
    return StubBroker(middleware=[*default_middleware(), Results(backend=backend, store_results=True)])


def test_result_store_hitting_a_lost_connection_hands_the_message_back() -> None:
    backend = FlakyBackend(failures=2)
    broker = _broker(backend)
    runs: list[int] = []

    @django_actors.actor(broker=broker)
    def double(x: int) -> int:
        runs.append(x)
        return x * 2

    message = double.send(21)
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert message.get_result(backend=backend, block=True, timeout=10_000) == 42
        broker.join(double.queue_name, timeout=10_000)
    finally:
        worker.stop()
    # Ran once per failed store plus the run whose result landed: nothing acked early.
    assert runs == [21, 21, 21]
    assert broker.dead_letters == []


def test_retry_enqueue_hitting_a_lost_connection_is_not_lost() -> None:
    broker = _broker(StubBackend())
    attempts: list[int] = []
    original = broker._enqueue_many
    failing = {"left": 1}

    def enqueue_many(items: Any, eta: Any) -> None:
        # Only the retry (the message already carries "retries") fails once.
        if failing["left"] and any("retries" in m.options for m, _ in items):
            failing["left"] -= 1
            raise ConnectionClosed("broker unreachable while scheduling the retry")
        original(items, eta)

    broker._enqueue_many = enqueue_many  # type: ignore[method-assign]

    @django_actors.actor(broker=broker, max_retries=1, min_backoff=1, max_backoff=1)
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    flaky.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join(flaky.queue_name, timeout=10_000)
        worker.join(timeout=10_000)
    finally:
        worker.stop()
    # The first attempt failed and its retry could not be enqueued: the
    # message was handed back and ran again. Without the hand-back the failed
    # first attempt would have been acked and the work lost.
    assert len(attempts) == 2
    assert broker.dead_letters == []
