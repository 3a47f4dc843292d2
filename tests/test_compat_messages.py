"""dramatiq-compatible edges of messages and errors: the eta option from
other producers, the proxy's repr, the connection error's names."""

from __future__ import annotations

import logging

import pytest

import django_actors
from django_actors import BrokerConnectionError, ConnectionClosed, ConnectionFailed, Message, actor
from django_actors.broker import MessageProxy
from django_actors.brokers.stub import StubBroker
from django_actors.encoder import get_encoder
from django_actors.testing import run_until_complete


def _payload(**options: object) -> bytes:
    return get_encoder().encode(
        {"queue_name": "default", "actor_name": "record", "args": [], "kwargs": {}, "options": options,
         "message_id": "m-1", "message_timestamp": 1_700_000_000_000}
    )  # fmt: skip


def test_a_null_eta_is_dropped_quietly(caplog):
    with caplog.at_level(logging.WARNING):
        message = Message.decode(_payload(eta=None, retries=1))
    assert message.options == {"retries": 1}
    assert not caplog.records


@pytest.mark.parametrize("eta", ["not-a-number", True, [1], {"at": 1}])
def test_an_eta_that_is_not_a_number_is_dropped_with_a_warning(caplog, eta):
    with caplog.at_level(logging.WARNING, logger="django_actors.message"):
        message = Message.decode(_payload(eta=eta))
    assert "eta" not in message.options
    assert any("Invalid eta value for message m-1" in r.getMessage() for r in caplog.records)


def test_a_numeric_eta_is_kept():
    assert Message.decode(_payload(eta=1_700_000_000_123)).options == {"eta": 1_700_000_000_123}


def test_a_message_with_a_bad_eta_from_another_producer_still_runs():
    broker = StubBroker()
    ran = []
    try:

        @actor(broker=broker, actor_name="record")
        def record():
            ran.append(True)

        broker.put_raw("default", _payload(eta="tomorrow"))
        run_until_complete(broker)
        assert ran == [True]
        assert broker.dead_letters == []
    finally:
        broker.close()


def test_a_proxy_repr_shows_the_message_repr():
    message = Message(queue_name="q", actor_name="a", args=(1,), kwargs={}, options={})
    assert repr(message) in repr(MessageProxy(message))


def test_connection_errors_have_dramatiq_2_names():
    assert issubclass(ConnectionClosed, BrokerConnectionError)
    assert issubclass(ConnectionFailed, BrokerConnectionError)
    assert django_actors.ConnectionError is BrokerConnectionError  # dramatiq 1's name still works
    assert issubclass(BrokerConnectionError, django_actors.BrokerError)


def test_worker_join_waits_for_failed_messages_without_raising_them():
    from django_actors import Worker

    broker = StubBroker()  # its own join raises failures by default (dramatiq 2)
    try:

        @actor(broker=broker, actor_name="explodes", max_retries=0)
        def explodes():
            raise RuntimeError("boom")

        explodes.send()
        worker = Worker(broker, worker_timeout=50, worker_threads=1)
        worker.start()
        try:
            worker.join(timeout=10_000)  # returns once the queue is done; the failure is not raised here
            assert len(broker.dead_letters) == 1
        finally:
            worker.stop(timeout=5000)
    finally:
        broker.close()


def test_a_stub_queue_hands_out_its_next_message_as_a_queue_queue_does():
    from queue import Empty

    broker = StubBroker()
    try:

        @actor(broker=broker, actor_name="add")
        def add(x, y):
            return x + y

        sent = add.send(1, 2)
        assert Message.decode(broker.queues["default"].get(timeout=1)) == sent
        with pytest.raises(Empty):
            broker.queues["default"].get(timeout=0.05)
        with pytest.raises(Empty):
            broker.queues["default"].get(block=False)
        broker.join("default", timeout=1000)  # taken out: the queue is empty, not waiting on it
        add.send_with_options(args=(3, 4), delay=30)
        assert Message.decode(broker.queues["default"].get(timeout=5)).args == (3, 4)  # once due
    finally:
        broker.close()
