"""Tests for the ShutdownNotifications middleware."""

from __future__ import annotations

import threading
import time

import pytest

from django_actors import Message, Worker, actor
from django_actors.brokers.stub import StubBroker
from django_actors.middleware import Retries, Shutdown, ShutdownNotifications


def spin_until(event, seconds=5):
    """Wait in Python-level steps so an async exception can arrive."""
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)


@pytest.fixture
def broker():
    broker = StubBroker(middleware=[ShutdownNotifications(), Retries(max_retries=3, min_backoff=60_000)])
    yield broker
    broker.close()


def test_an_actor_with_notify_shutdown_receives_shutdown_when_the_worker_stops(broker):
    started = threading.Event()
    never = threading.Event()
    outcome = []

    @actor(broker=broker, notify_shutdown=True)
    def long_running():
        started.set()
        try:
            spin_until(never)
        except Shutdown:
            outcome.append("shutdown")
            return
        outcome.append("timed out")

    long_running.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert started.wait(5)
    begin = time.monotonic()
    worker.stop(timeout=5000)
    assert time.monotonic() - begin < 3
    assert outcome == ["shutdown"]
    assert broker.queues["default"].empty


def test_an_actor_without_the_option_is_left_to_finish(broker):
    started = threading.Event()
    release = threading.Event()
    outcome = []

    @actor(broker=broker)
    def polite():
        started.set()
        try:
            spin_until(release)
        except Shutdown:
            outcome.append("shutdown")
            return
        outcome.append("finished")

    polite.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert started.wait(5)
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": 5000})
    stopper.start()
    deadline = time.monotonic() + 5
    while not worker._stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    stopper.join(5)
    assert outcome == ["finished"]


def test_an_uncaught_shutdown_is_retried_so_the_message_is_not_lost(broker):
    started = threading.Event()
    never = threading.Event()

    @actor(broker=broker, notify_shutdown=True)
    def interrupted():
        started.set()
        spin_until(never)

    message = interrupted.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5000)
    queue = broker.queues["default"]
    assert queue.unacked == 0
    assert broker.dead_letters == []
    [(_, _, data)] = queue.delayed
    retry = Message.decode(data)
    assert retry.message_id == message.message_id
    assert retry.options["retries"] == 1
    assert "Shutdown" in retry.options["traceback"]


def test_the_middleware_default_notifies_every_actor():
    broker = StubBroker(middleware=[ShutdownNotifications(notify_shutdown=True)])
    started = threading.Event()
    never = threading.Event()
    outcome = []

    @actor(broker=broker)
    def any_actor():
        started.set()
        try:
            spin_until(never)
        except Shutdown:
            outcome.append("shutdown")

    any_actor.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5000)
    assert outcome == ["shutdown"]


def test_the_message_option_can_opt_out(broker):
    started = threading.Event()
    release = threading.Event()
    outcome = []

    @actor(broker=broker, notify_shutdown=True)
    def opted_out():
        started.set()
        try:
            spin_until(release, seconds=0.3)
        except Shutdown:
            outcome.append("shutdown")
            return
        outcome.append("finished")

    opted_out.send_with_options(notify_shutdown=False)
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5000)
    assert outcome == ["finished"]


def test_idle_threads_are_not_notified_after_their_message(broker):
    done = threading.Event()

    @actor(broker=broker, notify_shutdown=True)
    def quick():
        done.set()

    quick.send()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    assert done.wait(5)
    broker.join("default", timeout=5000)
    middleware = broker.middleware[0]
    assert middleware._threads == set()
    worker.stop(timeout=5000)
    assert broker.dead_letters == []
