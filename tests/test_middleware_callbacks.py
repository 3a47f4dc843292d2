"""Tests for the Callbacks middleware: on_success and on_failure."""

from __future__ import annotations

import threading

import pytest

from django_actors import actor
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import Callbacks, Retries


class Calls:
    def __init__(self):
        self.items = []
        self.lock = threading.Lock()

    def add(self, *item):
        with self.lock:
            self.items.append(item)


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[Callbacks(), Retries(min_backoff=1, max_backoff=5)])
    yield broker
    broker.close()


def join(broker, *queues):
    for _ in range(2):  # callbacks may enqueue into queues joined earlier
        for queue_name in queues:
            broker.join(queue_name, timeout=5000, fail_fast=False)


def test_on_success_gets_the_message_data_and_the_result(broker, worker):
    calls = Calls()

    @actor(broker=broker, queue_name="callbacks")
    def succeeded(message_data, result):
        calls.add(message_data, result)

    @actor(broker=broker, on_success="succeeded")
    def add(a, b):
        return {"sum": a + b}

    message = add.send(1, 2)
    join(broker, "default", "callbacks")
    [(data, result)] = calls.items
    assert result == {"sum": 3}
    assert data["message_id"] == message.message_id
    assert data["actor_name"] == "add"
    assert data["args"] == [1, 2]


def test_callbacks_can_be_actors(broker, worker):
    calls = Calls()

    @actor(broker=broker)
    def succeeded(message_data, result):
        calls.add("success", result)

    @actor(broker=broker, on_success=succeeded)
    def value():
        return 42

    value.send()
    join(broker, "default")
    assert calls.items == [("success", 42)]


def test_callbacks_as_message_options(broker, worker):
    calls = Calls()

    @actor(broker=broker)
    def succeeded(message_data, result):
        calls.add("success", result)

    @actor(broker=broker)
    def failed(message_data, error):
        calls.add("failure", error["type"])

    @actor(broker=broker, max_retries=0)
    def maybe(fail):
        if fail:
            raise KeyError("x")
        return "ok"

    maybe.send_with_options(args=(False,), on_success=succeeded, on_failure=failed)
    maybe.send_with_options(args=(True,), on_success="succeeded", on_failure="failed")
    join(broker, "default")
    assert sorted(calls.items) == [("failure", "KeyError"), ("success", "ok")]


def test_on_failure_fires_on_every_failed_attempt_with_its_count(broker, worker):
    calls = Calls()
    attempts = Calls()

    @actor(broker=broker)
    def failed(message_data, error):
        calls.add(message_data, error)

    @actor(broker=broker, max_retries=2, on_failure="failed", on_success="failed")
    def always_fails():
        attempts.add(1)
        raise ValueError("broken for good")

    message = always_fails.send()
    join(broker, "default")
    assert len(attempts.items) == 3
    assert len(calls.items) == 3
    assert {data["message_id"] for data, _ in calls.items} == {message.message_id}
    assert {tuple(error.items()) for _, error in calls.items} == {
        (("type", "ValueError"), ("message", "broken for good"))
    }
    # Each call counts the failures so far: the last one is past max_retries.
    assert sorted(data["options"]["retries"] for data, _ in calls.items) == [1, 2, 3]


def test_on_failure_reports_the_failed_attempt_then_on_success_the_retry(broker, worker):
    calls = Calls()
    attempts = Calls()

    @actor(broker=broker)
    def failed(message_data, error):
        calls.add("failure", message_data["options"]["retries"])

    @actor(broker=broker)
    def succeeded(message_data, result):
        calls.add("success", result)

    @actor(broker=broker, max_retries=3, on_failure="failed", on_success="succeeded")
    def flaky():
        attempts.add(1)
        if len(attempts.items) < 2:
            raise ValueError("first time")
        return "second time lucky"

    flaky.send()
    join(broker, "default")
    assert sorted(calls.items) == [("failure", 1), ("success", "second time lucky")]


def test_on_failure_fires_at_once_for_thrown_exceptions(broker, worker):
    calls = Calls()
    attempts = Calls()

    @actor(broker=broker)
    def failed(message_data, error):
        calls.add(error["type"])

    @actor(broker=broker, max_retries=5, throws=(LookupError,), on_failure="failed")
    def expected_failure():
        attempts.add(1)
        raise KeyError("expected")

    expected_failure.send()
    join(broker, "default")
    assert len(attempts.items) == 1
    assert calls.items == [("KeyError",)]


def test_an_unknown_callback_is_logged_and_the_message_still_succeeds(broker, worker, caplog):
    @actor(broker=broker, on_success="no_such_callback")
    def fine():
        return 1

    fine.send()
    join(broker, "default")
    assert broker.dead_letters == []
    assert "no_such_callback" in caplog.text
