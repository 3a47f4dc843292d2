"""Testing support: a pytest plugin (registered through an entry point) with
fixtures for projects that use django_actors.

Fixtures:
  stub_broker: a fresh StubBroker with the default middleware and a stub
    results backend, installed as the global broker for the test.
  stub_worker: a running Worker on ``stub_broker`` (stopped after the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .broker import Broker, default_middleware, get_broker, set_broker
from .brokers.stub import StubBroker
from .middleware import CurrentMessage
from .results.backends.stub import StubBackend
from .results.middleware import Results
from .worker import Worker


def make_stub_broker() -> StubBroker:
    """A StubBroker with the default middleware, CurrentMessage and stub results."""
    return StubBroker(middleware=[*default_middleware(), CurrentMessage(), Results(backend=StubBackend())])


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
    if previous is not None:
        set_broker(previous)
    else:
        broker_module._broker = None


@pytest.fixture
def stub_worker(stub_broker: StubBroker) -> Iterator[Worker]:
    """A worker running on ``stub_broker``."""
    worker = Worker(stub_broker, worker_timeout=100, worker_threads=4)
    worker.start()
    yield worker
    worker.stop()


def run_until_complete(broker: Broker | None = None, *, timeout: int = 30_000) -> None:
    """Run every queued message (and what they enqueue) to completion.

    Starts a worker on the broker, joins every declared queue, and stops it.
    """
    broker = broker or get_broker()
    worker = Worker(broker, worker_timeout=50, worker_threads=4)
    worker.start()
    try:
        worker.join(timeout=timeout)
    finally:
        worker.stop()
