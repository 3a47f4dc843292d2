"""Testing support: a pytest plugin (registered through the ``pytest11``
entry point, so installing django_actors is enough) for projects that use it.

Fixtures:
  stub_broker: a fresh in-memory :class:`StubBroker`, installed as the global
    broker for the test, with the project's middleware
    (``DJANGO_ACTORS['MIDDLEWARE']`` or the defaults, without the admin
    mirror) and an in-memory results backend in place of the configured one.
    Its ``join(queue)`` raises what a failed message raised, as dramatiq 2's
    does (``join(queue, fail_fast=False)`` waits regardless).
  stub_worker: a :class:`Worker` running on ``stub_broker``, stopped after the test.

Helper:
  :func:`run_until_complete`: run every queued message, and every message
    those enqueue (pipeline steps, group callbacks, retries), to completion.

Example::

    from django_actors.testing import run_until_complete

    @pytest.mark.django_db(transaction=True)
    def test_order_is_fulfilled(stub_broker):
        order = place_order("a@example.com", [{"sku": "x", "quantity": 2, "unit_cents": 500}])
        run_until_complete(fail_fast=True)
        order.refresh_from_db()
        assert order.status == "done"

Actors run in worker threads, with their own database connections: use
``transactional_db`` (``django_db(transaction=True)``) so they see the
test's rows, and a file-backed SQLite test database (``TEST: {"NAME": ...}``).
Retries wait ``min_backoff`` (15 s by default) before running again; give
actors a small ``min_backoff`` in tests that exercise retries.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .broker import Broker, default_middleware, get_broker, set_broker
from .brokers.stub import StubBroker
from .errors import QueueJoinTimeout
from .middleware import CurrentMessage
from .results.backends.stub import StubBackend
from .results.middleware import Results
from .worker import Worker

if TYPE_CHECKING:
    from .broker import MessageProxy
    from .middleware.middleware import Middleware
    from .worker import _ConsumerThread

__all__ = ["make_stub_broker", "run_until_complete", "stub_broker", "stub_middleware", "stub_worker"]


def stub_middleware() -> list[Middleware]:
    """The middleware a test broker gets.

    With Django settings configured: the project's ``DJANGO_ACTORS['MIDDLEWARE']``
    (or the defaults), with a :class:`StubBackend` for results instead of the
    configured backend, and without the admin mirror. Without settings: the engine's defaults,
    ``CurrentMessage`` and stub results.
    """
    from django.conf import settings

    if not settings.configured:
        return [*default_middleware(), CurrentMessage(), Results(backend=StubBackend())]
    import dataclasses

    from .conf import build_middleware, get_settings

    config = get_settings()
    # Without the admin mirror: it writes to the database from a thread of its
    # own, which a test's database setup does not expect.
    mirror_off = dataclasses.replace(config.mirror, enabled=False)
    middleware = build_middleware(dataclasses.replace(config, results=None, mirror=mirror_off))
    results = Results(backend=StubBackend(), store_results=config.store_results, result_ttl=config.result_ttl)
    replaced = False
    for index, item in enumerate(middleware):
        if isinstance(item, Results):
            middleware[index] = results
            replaced = True
    if not replaced:
        middleware.append(results)
    return middleware


def make_stub_broker(middleware: list[Middleware] | None = None) -> StubBroker:
    """A :class:`StubBroker` with :func:`stub_middleware` (or ``middleware``)."""
    return StubBroker(middleware=stub_middleware() if middleware is None else middleware)


@pytest.fixture
def stub_broker() -> Iterator[StubBroker]:
    """A fresh stub broker, installed as the global broker for the test."""
    from . import broker as broker_module

    previous = broker_module._broker
    broker = make_stub_broker()
    broker.emit_after("process_boot")
    set_broker(broker)
    yield broker
    broker.flush_all()
    broker.emit_before("process_stop")
    broker.close()
    broker.emit_after("process_stop")
    if previous is not None:
        set_broker(previous)
    else:
        broker_module._broker = None


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    """A worker running on ``stub_broker`` (stopped after the test)."""
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop(timeout=10_000)


class _RecordingWorker(Worker):
    """A worker that remembers the messages it dead-lettered."""

    def __init__(self, broker: Broker, **kwargs: Any) -> None:
        super().__init__(broker, **kwargs)
        self.failures: list[MessageProxy] = []
        self._failures_lock = threading.Lock()

    def process_message(self, proxy: MessageProxy, consumer: _ConsumerThread) -> None:
        super().process_message(proxy, _SettleRecorder(consumer, self))  # type: ignore[arg-type]

    def record(self, proxy: MessageProxy) -> None:
        with self._failures_lock:
            self.failures.append(proxy)

    def raise_first_failure(self) -> None:
        with self._failures_lock:
            failed = self.failures[0] if self.failures else None
        if failed is None:
            return
        if failed.exception is not None:
            raise failed.exception
        raise RuntimeError(f"Message {failed.message_id} failed: {failed.fail_reason or 'no reason given'}")


class _SettleRecorder:
    """Stands in for a consumer thread: records a failure before it is settled,
    so a join that returns once the queue is empty never misses it."""

    def __init__(self, consumer: _ConsumerThread, worker: _RecordingWorker) -> None:
        self._consumer = consumer
        self._worker = worker

    def settle(self, proxy: MessageProxy) -> None:
        if proxy.failed:
            self._worker.record(proxy)
        self._consumer.settle(proxy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def run_until_complete(
    broker: Broker | None = None,
    *,
    timeout: int = 30_000,
    fail_fast: bool = False,
    worker_threads: int = 4,
) -> None:
    """Run every queued message, and whatever they enqueue, to completion.

    Starts a worker on ``broker`` (the global one by default) and waits until
    every declared queue (queues declared meanwhile included) is empty: no
    ready, delayed or running message, so pipeline steps, group callbacks and
    retries run too. Then stops the worker.

    Parameters:
      timeout: milliseconds for the whole run.
      fail_fast: raise the exception of the first message that failed for
        good (dead-lettered) instead of carrying on. Without it, failures
        are left in the dead letters, unraised (a stub broker's plain
        ``join`` afterwards still raises them).
      worker_threads: how many messages run at once.

    Raises:
      QueueJoinTimeout: messages were left after ``timeout`` ms (a retry
        delayed by a long ``min_backoff`` counts as left).
      Exception: with ``fail_fast``, what the first failed message raised.
    """
    broker = broker or get_broker()
    deadline = time.monotonic() + timeout / 1000
    worker = _RecordingWorker(broker, worker_timeout=50, worker_threads=worker_threads)
    worker.start()
    try:
        while True:
            queues = sorted(broker.get_declared_queues())
            for queue_name in queues:
                remaining = max(int((deadline - time.monotonic()) * 1000), 0)
                try:
                    _join(broker, queue_name, remaining)
                except QueueJoinTimeout as exc:
                    if fail_fast:
                        worker.raise_first_failure()
                    raise QueueJoinTimeout(
                        f"run_until_complete: messages were left after {timeout} ms: {exc}"
                    ) from None
                if fail_fast:
                    worker.raise_first_failure()
            # Settled only if nothing moved during the pass: the same queues,
            # all still empty (a later queue's messages may have enqueued into
            # an earlier one), nothing in the worker.
            if sorted(broker.get_declared_queues()) == queues and _all_empty(broker, queues) and _idle(worker):
                return
            if time.monotonic() >= deadline:
                raise QueueJoinTimeout(f"run_until_complete: the worker was still busy after {timeout} ms.")
            time.sleep(0.002)
    finally:
        worker.stop(timeout=max(int((deadline - time.monotonic()) * 1000), 1000))


def _join(broker: Broker, queue_name: str, timeout: int) -> None:
    """Join a queue without the broker's own fail-fast: failures are the
    recording worker's to report, as ``run_until_complete`` documents."""
    options: dict[str, Any] = {}
    if "fail_fast" in inspect.signature(broker.join).parameters:
        options["fail_fast"] = False
    broker.join(queue_name, timeout=timeout, **options)


def _all_empty(broker: Broker, queues: list[str]) -> bool:
    for queue_name in queues:
        try:
            _join(broker, queue_name, 0)
        except QueueJoinTimeout:
            return False
    return True


def _idle(worker: Worker) -> bool:
    return worker.work_queue.empty() and all(consumer.in_flight == 0 for consumer in worker.consumers.values())
