"""Django signals sent by the DjangoSignals middleware (in the default middleware)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import django_actors
from django_actors.brokers.stub import StubBroker
from django_actors.errors import ActorNotFound, DecodeError
from django_actors.message import Message
from django_actors.middleware import SkipMessage
from django_actors.middleware.signals import DjangoSignals
from django_actors.signals import (
    message_enqueued,
    message_failed,
    message_retried,
    message_started,
    message_succeeded,
)
from django_actors.testing import run_until_complete

SIGNALS = {
    "enqueued": message_enqueued,
    "started": message_started,
    "succeeded": message_succeeded,
    "retried": message_retried,
    "failed": message_failed,
}

attempts: dict[str, int] = {}


@django_actors.actor(actor_name="signals_add")
def add(x: int, y: int) -> int:
    return x + y


@django_actors.actor(actor_name="signals_always_fails", max_retries=2, min_backoff=1, max_backoff=2)
def always_fails() -> None:
    raise ValueError("always")


@django_actors.actor(actor_name="signals_flaky", max_retries=3, min_backoff=1, max_backoff=2)
def flaky(tag: str) -> str:
    attempts[tag] = attempts.get(tag, 0) + 1
    if attempts[tag] == 1:
        raise ConnectionResetError("first try fails")
    return tag


@django_actors.actor(actor_name="signals_throws", max_retries=5, throws=(PermissionError,))
def throws() -> None:
    raise PermissionError("not allowed")


@django_actors.actor(actor_name="signals_old", max_age=1)
def old() -> None:
    raise AssertionError("an expired message must not run")


Event = tuple[str, Any, dict[str, Any]]


@pytest.fixture
def received() -> Iterator[list[Event]]:
    """Every signal sent during the test, as (name, sender, kwargs)."""
    events: list[Event] = []
    receivers: list[tuple[Any, Callable[..., None]]] = []
    for name, signal in SIGNALS.items():

        def receiver(sender: Any, *, _name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal")
            events.append((_name, sender, kwargs))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    yield events
    for signal, receiver in receivers:
        signal.disconnect(receiver)


def names(events: list[Event]) -> list[str]:
    return [name for name, _, _ in events]


def test_the_default_middleware_sends_the_signals(stub_broker: StubBroker) -> None:
    assert any(isinstance(m, DjangoSignals) for m in stub_broker.middleware)


def test_enqueued_started_succeeded(stub_broker: StubBroker, received: list[Event]) -> None:
    message = add.send(2, 3)
    run_until_complete()
    assert names(received) == ["enqueued", "started", "succeeded"]
    enqueued, started, succeeded = received
    assert all(sender is add for _, sender, _ in received)
    assert enqueued[2] == {"broker": stub_broker, "message": message, "delay": None}
    assert started[2]["message"].message_id == message.message_id
    assert succeeded[2]["result"] == 5
    assert succeeded[2]["broker"] is stub_broker


def test_delay_is_passed_on_enqueue(stub_broker: StubBroker, received: list[Event]) -> None:
    add.send_with_options(args=(1, 1), delay=5)
    assert received[0][0] == "enqueued" and received[0][2]["delay"] == 5
    run_until_complete()


def test_retried_each_time_then_failed_for_good(stub_broker: StubBroker, received: list[Event]) -> None:
    message = always_fails.send()
    run_until_complete()
    assert names(received) == [
        "enqueued", "started", "enqueued", "retried",
        "started", "enqueued", "retried",
        "started", "failed",
    ]  # fmt: skip
    retried = [kwargs for name, _, kwargs in received if name == "retried"]
    assert [kwargs["message"].options["retries"] for kwargs in retried] == [1, 2]
    assert all(kwargs["message"].message_id == message.message_id for kwargs in retried)
    assert all(isinstance(kwargs["exception"], ValueError) for kwargs in retried)
    assert all(isinstance(kwargs["delay"], int) for kwargs in retried)
    (failed,) = [kwargs for name, _, kwargs in received if name == "failed"]
    assert isinstance(failed["exception"], ValueError)
    assert failed["reason"] == "ValueError: always"
    assert failed["message"].message_id == message.message_id


def test_retried_then_succeeded(stub_broker: StubBroker, received: list[Event]) -> None:
    flaky.send("once")
    run_until_complete()
    assert names(received) == ["enqueued", "started", "enqueued", "retried", "started", "succeeded"]
    assert isinstance(received[3][2]["exception"], ConnectionResetError)
    assert received[-1][2]["result"] == "once"


def test_an_exception_the_actor_throws_fails_at_once(stub_broker: StubBroker, received: list[Event]) -> None:
    throws.send()
    run_until_complete()
    assert names(received) == ["enqueued", "started", "failed"]
    assert isinstance(received[-1][2]["exception"], PermissionError)


def test_an_expired_message_fails_without_starting(stub_broker: StubBroker, received: list[Event]) -> None:
    message = old.message()
    stub_broker.enqueue(message.copy(message_timestamp=message.message_timestamp - 60_000))
    run_until_complete()
    assert names(received) == ["enqueued", "failed"]
    failed = received[-1][2]
    assert isinstance(failed["exception"], SkipMessage)
    assert "over its max_age of 1 ms" in failed["reason"]


def test_without_retries_a_raising_actor_is_reported_failed(received: list[Event]) -> None:
    broker = StubBroker(middleware=[DjangoSignals()])
    raises = django_actors.actor(lambda: 1 / 0, actor_name="signals_raises", broker=broker)
    try:
        raises.send()
        run_until_complete(broker)
    finally:
        broker.close()
    assert names(received) == ["enqueued", "started", "failed"]
    assert received[0][1] is raises
    assert isinstance(received[-1][2]["exception"], ZeroDivisionError)


def test_unknown_actor_and_undecodable_payload(stub_broker: StubBroker, received: list[Event]) -> None:
    stub_broker.enqueue(Message(queue_name="default", actor_name="signals_nobody", args=(), kwargs={}, options={}))
    stub_broker.put_raw("default", b"this is not a message")
    run_until_complete()
    failed = [(sender, kwargs) for name, sender, kwargs in received if name == "failed"]
    assert len(failed) == 2
    assert all(sender is None for sender, _ in failed)
    exceptions = sorted((type(kwargs["exception"]) for _, kwargs in failed), key=lambda cls: cls.__name__)
    assert exceptions == [ActorNotFound, DecodeError]
    assert not [name for name in names(received) if name in ("started", "succeeded", "retried")]


def test_a_receiver_that_raises_does_not_affect_the_message(
    stub_broker: StubBroker, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_receiver(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    message_started.connect(broken_receiver, sender=add)
    try:
        with caplog.at_level(logging.ERROR, logger="django_actors.middleware.signals"):
            message = add.send_with_options(args=(4, 5), store_results=True)
            run_until_complete(fail_fast=True)
    finally:
        message_started.disconnect(broken_receiver, sender=add)
    assert message.get_result(block=True, timeout=5000) == 9
    assert "A receiver of message_started" in caplog.text
    assert "receiver bug" in caplog.text


def test_receivers_can_listen_to_one_actor(stub_broker: StubBroker) -> None:
    seen: list[Any] = []

    def on_success(sender: Any, result: Any, **kwargs: Any) -> None:
        seen.append(result)

    message_succeeded.connect(on_success, sender=add)
    try:
        add.send(1, 2)
        flaky.send("other")
        run_until_complete()
    finally:
        message_succeeded.disconnect(on_success, sender=add)
    assert seen == [3]
