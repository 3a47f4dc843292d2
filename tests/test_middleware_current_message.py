"""Tests for the CurrentMessage middleware (sync and async actors)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from django_actors import Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import CurrentMessage, Retries
from django_actors.results import Results
from django_actors.results.backends.stub import StubBackend


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[CurrentMessage(), Retries(max_retries=0), Results(backend=StubBackend())])
    yield broker
    broker.close()


@pytest.fixture
def worker(broker):
    worker = Worker(broker, worker_timeout=50, worker_threads=3)
    worker.start()
    yield worker
    worker.stop(timeout=5000)


def result(broker, message):
    return message.get_result(backend=broker.get_results_backend(), block=True, timeout=5000)


def test_outside_an_actor_there_is_no_current_message():
    assert CurrentMessage.get_current_message() is None


def test_a_sync_actor_sees_its_message(broker, worker):
    @actor(broker=broker, store_results=True)
    def who_am_i(x):
        message = CurrentMessage.get_current_message()
        return [message.message_id, message.actor_name, list(message.args), message.options.get("tag")]

    message = who_am_i.send_with_options(args=(7,), tag="t1")
    assert result(broker, message) == [message.message_id, "who_am_i", [7], "t1"]


def test_an_async_actor_sees_its_message(broker, worker):
    @actor(broker=broker, store_results=True)
    async def who_am_i_async():
        await asyncio.sleep(0)
        return CurrentMessage.get_current_message().message_id

    messages = [who_am_i_async.send() for _ in range(5)]
    assert [result(broker, m) for m in messages] == [m.message_id for m in messages]


def test_concurrent_actors_each_see_their_own_message(broker, worker):
    barrier = threading.Barrier(3, timeout=5)

    @actor(broker=broker, store_results=True)
    def concurrent():
        before = CurrentMessage.get_current_message().message_id
        barrier.wait()  # all three run at once
        return before == CurrentMessage.get_current_message().message_id and before

    messages = [concurrent.send() for _ in range(3)]
    assert [result(broker, m) for m in messages] == [m.message_id for m in messages]


def test_the_current_message_is_cleared_after_processing(broker, worker):
    seen_after = []
    done = threading.Event()

    class Probe(CurrentMessage):
        def after_process_message(self, broker, message, *, result=None, exception=None):
            super().after_process_message(broker, message, result=result, exception=exception)
            seen_after.append(CurrentMessage.get_current_message())
            done.set()

    probe_broker = StubBroker(middleware=[Probe()])

    @actor(broker=probe_broker)
    def probed():
        pass

    probe_worker = Worker(probe_broker, worker_timeout=50, worker_threads=1)
    probe_worker.start()
    try:
        probed.send()
        assert done.wait(5)
    finally:
        probe_worker.stop()
    assert seen_after == [None]


def test_the_current_message_is_visible_to_a_failing_actor(broker, worker):
    seen = []

    @actor(broker=broker)
    def fails():
        seen.append(CurrentMessage.get_current_message().message_id)
        raise ValueError

    message = fails.send()
    broker.join("default", timeout=5000, fail_fast=False)
    assert seen == [message.message_id]
