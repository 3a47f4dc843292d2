"""Tests for the AgeLimit middleware: old messages are skipped and dead-lettered."""

from __future__ import annotations

import pytest

from django_actors import Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.message import current_millis
from django_actors.middleware import AgeLimit, Callbacks, Retries
from django_actors.results import ResultFailure, Results
from django_actors.results.backends.stub import StubBackend


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[AgeLimit(), Callbacks(), Retries(max_retries=0), Results(backend=StubBackend())])
    yield broker
    broker.close()


@pytest.fixture
def worker(broker):
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    yield worker
    worker.stop(timeout=5000)


def aged(message, age_ms):
    return message.copy(message_timestamp=current_millis() - age_ms)


def test_an_old_message_is_skipped_and_dead_lettered(broker, worker):
    ran = []

    @actor(broker=broker, max_age=1000)
    def fresh_only(i):
        ran.append(i)

    old = broker.enqueue(aged(fresh_only.message(1), 5000))
    fresh_only.send(2)
    broker.join("default", timeout=5000, fail_fast=False)
    assert ran == [2]
    [letter] = broker.dead_letters
    assert letter.message_id == old.message_id
    assert "over its max_age of 1000 ms" in letter.fail_reason


def test_a_message_within_its_age_runs(broker, worker):
    ran = []

    @actor(broker=broker, max_age=60_000)
    def fresh_only():
        ran.append(1)

    broker.enqueue(aged(fresh_only.message(), 1000))
    broker.join("default", timeout=5000)
    assert ran == [1]
    assert broker.dead_letters == []


def test_max_age_as_a_message_option_overrides_the_actor(broker, worker):
    ran = []

    @actor(broker=broker, max_age=60_000)
    def fresh_only(i):
        ran.append(i)

    broker.enqueue(aged(fresh_only.message_with_options(args=(1,), max_age=100), 1000))
    broker.enqueue(aged(fresh_only.message_with_options(args=(2,)), 1000))
    broker.join("default", timeout=5000, fail_fast=False)
    assert ran == [2]
    assert [p.args for p in broker.dead_letters] == [(1,)]


def test_middleware_default_applies_to_actors_without_the_option():
    broker = StubBroker(middleware=[AgeLimit(max_age=500)])
    ran = []

    @actor(broker=broker)
    def anything(i):
        ran.append(i)

    broker.enqueue(aged(anything.message(1), 2000))
    anything.send(2)
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.join("default", timeout=5000, fail_fast=False)
    finally:
        worker.stop()
    assert ran == [2]
    assert len(broker.dead_letters) == 1


def test_no_limit_by_default(broker, worker):
    ran = []

    @actor(broker=broker)
    def ancient():
        ran.append(1)

    broker.enqueue(aged(ancient.message(), 30 * 24 * 3600 * 1000))
    broker.join("default", timeout=5000)
    assert ran == [1]


def test_a_caller_waiting_on_a_skipped_message_gets_result_failure(broker, worker):
    @actor(broker=broker, max_age=100, store_results=True)
    def too_late():
        return "never"

    old = broker.enqueue(aged(too_late.message(), 10_000))
    with pytest.raises(ResultFailure, match="actor raised SkipMessage: Message age limit exceeded") as info:
        old.get_result(backend=broker.get_results_backend(), block=True, timeout=5000)
    assert info.value.message_id == old.message_id


def test_a_skipped_message_is_not_retried_nor_reported_as_a_failure(broker, worker):
    calls = []

    @actor(broker=broker)
    def on_failure(message_data, error):
        calls.append(error)

    @actor(broker=broker, max_age=100, max_retries=3, on_failure="on_failure")
    def too_late():
        pass

    broker.enqueue(aged(too_late.message(), 10_000))
    broker.join("default", timeout=5000, fail_fast=False)
    assert len(broker.dead_letters) == 1
    assert calls == []
    assert not broker.queues["default"].delayed
