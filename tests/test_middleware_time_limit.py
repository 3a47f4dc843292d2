"""Tests for the TimeLimit middleware."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from django_actors import Middleware, Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import Retries, TimeLimit, TimeLimitExceeded
from django_actors.results import ResultFailure, Results
from django_actors.results.backends.stub import StubBackend


def busy_for(seconds):
    """Spin (no sleeping in C: the async exception must reach Python code)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        pass
    return time.monotonic() - start


@pytest.fixture
def time_limit():
    return TimeLimit(interval=10)


@pytest.fixture
def broker(time_limit):
    broker = StubBroker(middleware=[time_limit, Retries(max_retries=0), Results(backend=StubBackend())])
    yield broker
    broker.close()


def result(broker, message):
    return message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000)


def test_a_busy_actor_gets_time_limit_exceeded_within_its_limit(broker, worker):
    @actor(broker=broker, time_limit=100, store_results=True)
    def spins():
        start = time.monotonic()
        try:
            busy_for(5)
        except TimeLimitExceeded:
            return time.monotonic() - start
        return None

    elapsed = result(broker, spins.send())
    assert elapsed is not None
    assert 0.09 <= elapsed < 1.0


def test_an_uncaught_time_limit_fails_the_message(broker, worker):
    @actor(broker=broker, time_limit=50, store_results=True)
    def spins_forever():
        busy_for(5)

    message = spins_forever.send()
    begin = time.monotonic()
    with pytest.raises(ResultFailure) as info:
        result(broker, message)
    assert time.monotonic() - begin < 2
    assert info.value.orig_exc_type == "TimeLimitExceeded"
    [letter] = broker.dead_letters
    assert isinstance(letter.exception, TimeLimitExceeded)


def test_the_message_option_overrides_the_actor_option(broker, worker):
    @actor(broker=broker, time_limit=60_000, store_results=True)
    def spins(seconds):
        try:
            busy_for(seconds)
        except TimeLimitExceeded:
            return "limited"
        return "finished"

    limited = spins.send_with_options(args=(5,), time_limit=50)
    assert result(broker, limited) == "limited"
    assert result(broker, spins.send(0.05)) == "finished"


def test_the_middleware_default_applies():
    broker = StubBroker(middleware=[TimeLimit(time_limit=50, interval=10), Results(backend=StubBackend())])

    @actor(broker=broker, store_results=True)
    def spins():
        try:
            busy_for(5)
        except TimeLimitExceeded:
            return "limited"

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert result(broker, spins.send()) == "limited"
    finally:
        worker.stop()


def test_actors_within_their_limit_are_not_interrupted_later(broker, worker):
    @actor(broker=broker, time_limit=50, store_results=True)
    def quick():
        return "quick"

    @actor(broker=broker, store_results=True, time_limit=0)
    def unlimited_spin():
        try:
            busy_for(0.3)
        except TimeLimitExceeded:
            return "interrupted"
        return "finished"

    quicks = [quick.send() for _ in range(4)]
    assert [result(broker, m) for m in quicks] == ["quick"] * 4
    assert result(broker, unlimited_spin.send()) == "finished"


def test_slow_after_hooks_are_not_interrupted_once_the_actor_returned(time_limit, caplog):
    finished = []

    class SlowAfter(Middleware):
        def after_process_message(self, broker, message, *, result=None, exception=None):
            busy_for(0.3)  # e.g. a slow results backend, longer than the actor's limit
            finished.append(type(exception).__name__)

    broker = StubBroker(middleware=[time_limit, Retries(max_retries=0), SlowAfter()])

    @actor(broker=broker, time_limit=50)
    def returns_at_once():
        return 1

    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        with caplog.at_level(logging.ERROR):
            returns_at_once.send()
            broker.join("default", timeout=5000)
    finally:
        worker.stop()
    assert finished == ["NoneType"]
    assert broker.dead_letters == []
    assert "TimeLimitExceeded" not in caplog.text


def test_an_async_actor_is_cancelled_at_its_limit(broker, worker):
    cancelled = threading.Event()

    @actor(broker=broker, time_limit=100, store_results=True)
    async def sleeps_long():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    message = sleeps_long.send()
    begin = time.monotonic()
    with pytest.raises(ResultFailure) as info:
        result(broker, message)
    assert time.monotonic() - begin < 3
    assert info.value.orig_exc_type == "TimeLimitExceeded"
    assert cancelled.wait(5)


def test_the_monitor_thread_stops_when_idle(broker, worker, time_limit):
    @actor(broker=broker, time_limit=1000, store_results=True)
    def quick():
        return 1

    assert result(broker, quick.send()) == 1
    deadline = time.monotonic() + 5
    while time_limit._monitor is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert time_limit._monitor is None
    assert result(broker, quick.send()) == 1  # a new monitor starts when needed
